"""torchrun (`torch.distributed.run`), with its rendezvous stores bound to the loopback address when the job's
address is loopback: torch's TCPStore server otherwise listens on every interface, whatever host it is given.

    python -m disttrain.launchers.torchrun_agent [torchrun's arguments]

Only the master side of a store whose host is a loopback name is changed: this module binds the listening
socket to that address itself and hands it to the store (`master_listen_fd`). Every other store is torch's own.
"""

from __future__ import annotations

import socket
from datetime import timedelta

import torch.distributed as dist

from disttrain.runtime.env import is_loopback

_TCPStore = dist.TCPStore


class LoopbackTCPStore(_TCPStore):
    def __init__(self, host_name: str, port: int, world_size: int | None = None, is_master: bool = False,
                 timeout: timedelta = timedelta(seconds=300), wait_for_workers: bool = True,
                 multi_tenant: bool = False, master_listen_fd: int | None = None, use_libuv: bool = True):
        if is_master and master_listen_fd is None and is_loopback(host_name):
            host = "127.0.0.1" if host_name in ("localhost", "ip6-localhost") else host_name
            listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                listener.bind((host, port))
                listener.listen(128)
            except OSError as exc:  # as torch's store says it: the rendezvous then joins as a client
                listener.close()
                raise RuntimeError(f"The server socket has failed to listen on {host}:{port} ({exc})") from None
            port = listener.getsockname()[1]
            master_listen_fd = listener.detach()
        super().__init__(host_name, port, world_size, is_master, timeout, wait_for_workers, multi_tenant,
                         master_listen_fd, use_libuv)


def _patch() -> None:
    from torch.distributed.elastic.rendezvous import c10d_rendezvous_backend, static_tcp_rendezvous

    dist.TCPStore = LoopbackTCPStore
    c10d_rendezvous_backend.TCPStore = LoopbackTCPStore
    static_tcp_rendezvous.TCPStore = LoopbackTCPStore


def main() -> int:
    from torch.distributed import run
    from torch.distributed.elastic.multiprocessing.api import SignalException

    _patch()
    try:
        run.main()
    except SignalException as exc:  # a stop request passed on to the workers: not a crash, no traceback
        return 128 + int(exc.sigval)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
