"""The training order of a prepared split: blocks of consecutive rows permuted by (seed, epoch), cut into shuffle
windows whose rows are permuted again (see `disttrain.data.prepared`). Pure index arithmetic, no data."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from disttrain.errors import DataError

BLOCK_ROWS = 4096


def _generator(seed: int, stream: int) -> np.random.Generator:
    """Philox keyed by (seed, stream) as two 64-bit words: any seed, a negative one as its two's complement (a
    plain list would pass seeds from 2**63 up through float64, where neighbours collide)."""
    return np.random.Generator(np.random.Philox(key=np.array([seed & (2**64 - 1), stream], dtype=np.uint64)))


class ShuffleOrder:
    """The training order of one split (see the module's docstring): position p of epoch e -> a row number.

    `num_rows` rows from `first_row`, cut into blocks of `block_rows`; the permuted blocks are grouped into windows
    of `window // block_rows` blocks. A window's length is what its blocks hold: the short last block (when
    `num_rows` is not a multiple of `block_rows`) may land in any window, so positions are located by the windows'
    real starts, never by `p // window`."""

    def __init__(self, num_rows: int, *, window: int, seed: int, first_row: int = 0, block_rows: int = BLOCK_ROWS,
                 where: str = "the training split"):
        assert num_rows >= 0 and block_rows > 0 and window > 0 and window % block_rows == 0, (num_rows, window)
        self.num_rows, self.window, self.seed, self.first_row = num_rows, window, seed, first_row
        self.block_rows, self.where = block_rows, where
        self.num_blocks = -(-num_rows // block_rows)
        self._epochs: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._windows: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def blocks(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(the permuted block numbers, the windows' starts: position of window w's first row, then `num_rows`)."""
        if epoch not in self._epochs:
            order = _generator(self.seed, 0x5EED0000 + epoch).permutation(self.num_blocks)
            lengths = np.minimum(self.block_rows, self.num_rows - order * self.block_rows)
            per = self.window // self.block_rows
            ends = np.cumsum(lengths)[per - 1 : self.num_blocks - 1 : per]  # of every window but the last
            self._epochs[epoch] = order, np.concatenate([[0], ends, [self.num_rows]])
            while len(self._epochs) > 2:
                self._epochs.popitem(last=False)
        return self._epochs[epoch]

    def window_rows(self, epoch: int, w: int) -> np.ndarray:
        """Row numbers of window w of `epoch`, in their shuffled order."""
        key = (epoch, w)
        if key not in self._windows:
            order = self.blocks(epoch)[0]
            per = self.window // self.block_rows
            starts = order[w * per : (w + 1) * per] * self.block_rows
            lengths = np.minimum(starts + self.block_rows, self.num_rows) - starts
            rows = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
            shuffled = _generator(self.seed, (epoch << 32) + w + 1).permutation(rows.size)
            self._windows[key] = self.first_row + rows[shuffled]
            while len(self._windows) > 4:
                self._windows.popitem(last=False)
        return self._windows[key]

    def rows(self, epoch: int, first: int, count: int) -> np.ndarray:
        """Row numbers of positions [first, first + count) of `epoch`."""
        starts = self.blocks(epoch)[1]
        out, pos, end = [], first, first + count
        while pos < end:
            w = int(np.searchsorted(starts, pos, side="right")) - 1
            rows = self.window_rows(epoch, w)
            offset = pos - int(starts[w])
            take = min(end - pos, rows.size - offset)
            if offset < 0 or take <= 0:  # no progress: say so rather than loop
                raise DataError(f"{self.where}: training position {pos} of epoch {epoch} lies outside shuffle window "
                                f"{w} ({rows.size} rows from position {int(starts[w])}); {self.num_rows} training "
                                f"rows, windows of {self.window}, blocks of {self.block_rows}")
            out.append(rows[offset : offset + take])
            pos += take
        if len(out) == 1:
            return out[0]
        return np.concatenate(out) if out else np.empty(0, dtype=np.int64)
