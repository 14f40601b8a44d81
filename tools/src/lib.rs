//! `tessera-tools`: the `tessera` CLI (shell, admin, offline inspectors). Empty until the server issue (#3) lands.
