"""One Backend interface, one module per engine; numpy in, numpy out. Imports no torch (except runtimes.torch)."""
