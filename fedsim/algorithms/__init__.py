"""The algorithm API: tasks, the registry, the server and client halves' bases, the one training
loop, channels and the wrappers every algorithm runs in."""
