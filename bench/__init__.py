"""deployctl's benchmarks: capture overhead, replay speed and the restore's write pause.

Each run starts its own throwaway PostgreSQL cluster, measures the compared variants
interleaved (A B A B …) so that a noisy shared machine hurts both alike, and prints one
`name value` line per metric on stdout (progress goes to stderr). Run it with `make bench`.
"""
