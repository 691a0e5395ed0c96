"""Entry point of the TensorFlow child process that the oneDNN on/off targets talk to (see
`tensorflow._Child`); a module of its own so that the adapter module is imported only once."""

from conformance.adapters.tensorflow import serve

if __name__ == "__main__":
    serve()
