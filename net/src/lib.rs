//! `tessera-net`: the shard runtime (executor placement, cross-shard mesh, routing, TCP server, metrics) and the `tessera-server` binary. Empty until the server issue (#3) lands; see DESIGN.md §2.
