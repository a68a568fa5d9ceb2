"""Cross-cutting concerns as wrappers: around any Flower strategy on the server
(:mod:`fedsim.wrap.server`) and as ClientApp mods around any client
(:mod:`fedsim.wrap.client`)."""
