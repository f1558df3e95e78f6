"""The ready configs: `disttrain launch demo` runs `demo.yaml`; `disttrain config list` lists them. They install
inside the package (disttrain.cluster_configs), so a `pip install`ed disttrain finds them by name."""
