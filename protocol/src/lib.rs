//! `tessera-protocol`: the flatbuffers schema, generated code, framing and error codes shared by server and clients. Empty until the server issue (#3) lands; see DESIGN.md §6.
