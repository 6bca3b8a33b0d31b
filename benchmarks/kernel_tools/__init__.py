"""Developer tools for the fused kernels: sm_90 builds on any machine (`sass`), the block-size candidates
`benchmarks/sweep.py` times (`candidates`) and the roofline estimate `benchmarks/gpu.py` prints (`roofline`)."""
