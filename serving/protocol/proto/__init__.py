"""Generated protobuf code. Regenerate with ``python -m serving.protocol.proto.generate``."""
