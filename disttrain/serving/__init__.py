"""Serving: a trained checkpoint in one process or sharded (`disttrain infer`), as int8 (`disttrain quantize`),
as ONNX (`disttrain export-onnx`), as one plain file (`disttrain export`), and reference checkpoints in
(`disttrain import`). Every verb opens its model with `open.open_model`. Serving depends on the engine, never the
reverse."""
