"""Launchers (installed as `disttrain.launchers`): each only starts processes that end in `disttrain.worker`."""
