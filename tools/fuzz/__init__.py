"""Fuzz harness for onnxfold: see __main__.py and the README (Fuzzing)."""
