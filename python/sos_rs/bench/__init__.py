"""`sos bench`: measures this machine with sos_rs (FMA peak, GEMM at model shapes, attention,
a training step of every family) and, with `--vs-torch`, the same models in PyTorch. Each
measurement runs in its own process (`worker`), so peak RSS is its own and no library's
threads linger in another's; `runner` drives them and prints the table; `flops` holds the
FLOP counts; `timing` the helpers the Python benches share."""
