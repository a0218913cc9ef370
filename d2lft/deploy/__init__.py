"""Using a trained network outside a training session: ONNX export and prediction
with onnxruntime alone (:mod:`.onnx`), and a local web page (:mod:`.serve`).

The optional packages (onnx, onnxruntime; starlette, uvicorn) are imported when a
function first needs them, with an error naming the extra to install.
"""
