"""One builder per darknet layer type: parse(section, input shape) -> Layer, Layer.emit(graph)."""
