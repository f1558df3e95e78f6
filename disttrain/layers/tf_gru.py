"""A GRU in TensorFlow's GRUCell convention (reset gate applied before the recurrent matmul,
`h = u * h_prev + (1 - u) * c`), optionally with DIEN's attentional update gate (`u' = (1 - a) * u`, AUGRU),
with sequence lengths given by a mask (state frozen, output zero past a sequence's end, as TF's
`dynamic_rnn(sequence_length=...)`). The input projections of all steps are one matmul outside the loop; the
loop itself runs forward and backward (hand-written BPTT) without autograd's per-op bookkeeping.
"""

from __future__ import annotations

import torch
from torch import nn

from disttrain.layers.batch_stats import at_least_fp32


class _TFGRU(torch.autograd.Function):
    """The recurrence over a batch sorted by length, longest first: at step t only the first `active[t]` rows
    are still running (like a PackedSequence), so finished and padded rows cost nothing and need no masking.

    Inputs: gate_x [L, B, 2H] and cand_x [L, B, H] (input projections plus biases, time-major), recurrent
    kernels w_gate [H, 2H] and w_cand [H, H], keep [L, B, 1] (1 - attention; None for a plain GRU).
    Output: states [L, B, H]; row b of step t is zero once b's sequence has ended (TF's dynamic_rnn output).
    """

    @staticmethod
    def forward(ctx, gate_x, cand_x, w_gate, w_cand, keep, active):
        steps, batch, hidden = cand_x.shape
        states = cand_x.new_zeros(steps + 1, batch, hidden)  # states[0] = h0 = 0
        gates = torch.zeros_like(gate_x)
        cands = torch.zeros_like(cand_x)
        r_h = torch.zeros_like(cand_x)
        scaled = torch.zeros_like(cand_x) if keep is not None else None  # the update gate times (1 - att)
        runs = _runs(active)
        v_h, v_new = _views(states, runs), _views(states, runs, shift=1)
        v_g, v_c, v_rh = _views(gates, runs), _views(cands, runs), _views(r_h, runs)
        v_gx, v_cx = _views(gate_x, runs), _views(cand_x, runs)
        v_us, v_keep = (_views(scaled, runs), _views(keep, runs)) if keep is not None else (None, None)
        for t in range(len(active)):
            h = v_h[t]
            g = torch.addmm(v_gx[t], h, w_gate, out=v_g[t]).sigmoid_()
            u = g[:, hidden:]
            rh = torch.mul(g[:, :hidden], h, out=v_rh[t])
            c = torch.addmm(v_cx[t], rh, w_cand, out=v_c[t]).tanh_()
            if keep is not None:
                u = torch.mul(u, v_keep[t], out=v_us[t])
            # h_new = u * h + (1 - u) * c = c + u * (h - c)
            torch.sub(h, c, out=v_new[t]).mul_(u).add_(c)
        ctx.save_for_backward(w_gate, w_cand, keep, states, gates, cands, r_h, scaled)
        ctx.active = active
        return states[1:]

    @staticmethod
    def backward(ctx, grad_states):
        w_gate, w_cand, keep, states, gates, cands, r_h, scaled = ctx.saved_tensors
        steps, batch, hidden = cands.shape
        if steps == 0:
            return (torch.zeros_like(gates), torch.zeros_like(cands), torch.zeros_like(w_gate), torch.zeros_like(w_cand),
                    torch.zeros_like(keep) if keep is not None else None, None)
        # Everything that does not depend on the incoming gradient, for all steps at once.
        us = scaled if keep is not None else gates[:, :, hidden:]
        h_minus_c = states[:-1] - cands
        d_cand_scale = (1.0 - us) * (1.0 - cands * cands)  # dh_new/dc times tanh'
        d_sigmoid = gates * (1.0 - gates)
        d_gate_x = torch.zeros_like(gates)
        d_cand_x = torch.zeros_like(cands)
        d_us_all = torch.zeros_like(cands) if keep is not None else None
        w_gate_t, w_cand_t = w_gate.t(), w_cand.t()
        dh = grad_states.new_zeros(steps + 1, batch, hidden)  # dh[t]: gradient reaching the state before step t
        runs = _runs(ctx.active)
        v = {name: _views(x, runs) for name, x in (
            ("h", states), ("g", gates), ("hc", h_minus_c), ("us", us), ("dc", d_cand_scale), ("ds", d_sigmoid),
            ("dgx", d_gate_x), ("dcx", d_cand_x), ("grad", grad_states), ("dh", dh))}
        v_next = _views(dh, runs, shift=1)
        v_keep = _views(keep, runs) if keep is not None else None
        v_dus = _views(d_us_all, runs) if keep is not None else None
        for t in range(steps - 1, -1, -1):
            d_new = v_next[t].add_(v["grad"][t])  # gradient of this step's new state (rows still running)
            g = v["g"][t]
            dz_c = torch.mul(d_new, v["dc"][t], out=v["dcx"][t])
            dz_g = v["dgx"][t]
            if keep is not None:
                d_us = torch.mul(d_new, v["hc"][t], out=v_dus[t])
                torch.mul(d_us, v_keep[t], out=dz_g[:, hidden:])
            else:
                torch.mul(d_new, v["hc"][t], out=dz_g[:, hidden:])
            dh_prev = d_new * v["us"][t]
            d_rh = dz_c.mm(w_cand_t)
            dh_prev.addcmul_(d_rh, g[:, :hidden])
            torch.mul(d_rh, v["h"][t], out=dz_g[:, :hidden])
            dz_g.mul_(v["ds"][t])
            # Rows that ended before step t get no gradient through later states (their outputs there are
            # zero), so dh[t] of those rows stays zero.
            torch.addmm(dh_prev, dz_g, w_gate_t, out=v["dh"][t])
        # Gradients that sum over steps: one op each instead of one per step.
        d_keep = (d_us_all * gates[:, :, hidden:]).sum(2, keepdim=True) if keep is not None else None
        d_w_gate = states[:-1].reshape(-1, hidden).t().mm(d_gate_x.reshape(-1, 2 * hidden))
        d_w_cand = r_h.reshape(-1, hidden).t().mm(d_cand_x.reshape(-1, hidden))
        return d_gate_x, d_cand_x, d_w_gate, d_w_cand, d_keep, None


def _runs(active: list[int]) -> list[tuple[int, int, int]]:
    """Consecutive steps with the same number of running rows: (first step, end step, rows)."""
    runs, start = [], 0
    for t in range(1, len(active) + 1):
        if t == len(active) or active[t] != active[start]:
            runs.append((start, t, active[start]))
            start = t
    return runs


def _views(x: torch.Tensor, runs, shift: int = 0) -> list[torch.Tensor]:
    """Per step t, `x[t + shift, :rows(t)]`, made with one slice per run of equal rows instead of one per step."""
    out: list[torch.Tensor] = []
    for t0, t1, n in runs:
        out.extend(x[t0 + shift : t1 + shift, :n].unbind(0))
    return out


def _reference_gru(gate_x, cand_x, w_gate, w_cand, keep, active):
    """The same recurrence through autograd, one masked step at a time: the test oracle for `_TFGRU`."""
    steps, batch, hidden = cand_x.shape
    h, outputs = cand_x.new_zeros(batch, hidden), []
    for t in range(steps):
        m = (torch.arange(batch, device=h.device) < active[t]).to(h.dtype).unsqueeze(1)
        g = torch.sigmoid(gate_x[t] + h @ w_gate)
        r, u = g[:, :hidden], g[:, hidden:]
        c = torch.tanh(cand_x[t] + (r * h) @ w_cand)
        if keep is not None:
            u = keep[t] * u
        h_new = u * h + (1.0 - u) * c
        outputs.append(h_new * m)
        h = m * h_new + (1.0 - m) * h
    return torch.stack(outputs)


class TFGRU(nn.Module):
    """`tf.compat.v1.nn.rnn_cell.GRUCell` run by `dynamic_rnn(sequence_length=...)`; with `att` given, DIEN's
    AUGRU (VecAttGRUCell: the update gate scaled by `1 - att`).

    Parameters as TF lays them out: gate kernel [in + H, 2H] (reset, update; bias initialised to 1.0) and
    candidate kernel [in + H, H] (bias 0), Glorot-uniform initialised.
    """

    def __init__(self, input_size: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.gate_kernel = nn.Parameter(torch.empty(input_size + hidden, 2 * hidden))
        self.gate_bias = nn.Parameter(torch.ones(2 * hidden))
        self.cand_kernel = nn.Parameter(torch.empty(input_size + hidden, hidden))
        self.cand_bias = nn.Parameter(torch.zeros(hidden))
        nn.init.xavier_uniform_(self.gate_kernel)
        nn.init.xavier_uniform_(self.cand_kernel)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, att: torch.Tensor | None = None,
                *, reference: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, L, in] with the first `lengths[b]` steps of row b real, att [B, L] ->
        (outputs [B, L, H], zero past each length; final states [B, H], zero for an empty sequence).
        Always fp32: the loop is bound by per-step overheads, not arithmetic, so bf16 would only lose bits."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._forward(at_least_fp32(x), lengths, at_least_fp32(att), reference)

    def _forward(self, x, lengths, att, reference):
        batch, seq_len, n_in = x.shape
        lengths_sorted, order = torch.sort(lengths, descending=True, stable=True)
        longest = int(lengths_sorted[0]) if batch else 0
        # active[t]: rows (of the sorted batch) whose sequence has a step t. With no steps at all the
        # parameters still join the graph (with zero gradients): every rank must run the same graph, or
        # data-parallel gradient buckets would be launched in different orders on different ranks.
        counts = torch.bincount(lengths_sorted.clamp(max=longest), minlength=longest + 1)
        active = (batch - torch.cumsum(counts, 0)[:-1]).tolist()
        xt = x.index_select(0, order)[:, :longest].transpose(0, 1).reshape(-1, n_in)
        gate_x = torch.addmm(self.gate_bias, xt, self.gate_kernel[:n_in]).view(longest, batch, 2 * self.hidden)
        cand_x = torch.addmm(self.cand_bias, xt, self.cand_kernel[:n_in]).view(longest, batch, self.hidden)
        keep = None
        if att is not None:
            keep = (1.0 - att.index_select(0, order)[:, :longest]).t().unsqueeze(2).contiguous()
        run = _reference_gru if reference else _TFGRU.apply
        states = run(gate_x, cand_x, self.gate_kernel[n_in:], self.cand_kernel[n_in:], keep, active)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(batch, device=order.device)
        outputs = states.transpose(0, 1).index_select(0, inverse)  # [B, longest, H]
        padded = torch.cat([outputs, outputs.new_zeros(batch, max(seq_len - longest, 1), self.hidden)], 1)
        final = padded[torch.arange(batch, device=x.device), (lengths - 1).clamp(min=0)]
        final = final * (lengths > 0).to(final.dtype).unsqueeze(1)
        return padded[:, :seq_len], final
