"""Performance kernels (fbgemm TBE wrappers, quantized tables, GPU kernels), each with a pure-torch reference."""
