"""Cross-cutting concerns as wrappers: around any Flower strategy on the server
(:mod:`fedsim.algorithms.wrap.server`) and as ClientApp mods around any client
(:mod:`fedsim.algorithms.wrap.client`)."""
