"""The TCP storage layer: the `Backend` contract spoken over a socket to one server process.

    client.py  RemoteBackend ─┐                        ┌─ engine.py  BrokerServer
      (one proxy per op,      │  wire.py: frames, the  │    (one thread per connection,
       resend rules after a   ├─ handshake, the MAC ───┤     ChangeFeed for long-polls)
       lost reply)            │                        │        │
                              └── ops.py: the allowlist┘        ▼
                                  of operations, their     a `Backend` (SQLite)
                                  argument checks

`wire` knows nothing of backends; `ops` reads the operations off `backend.base.Backend`;
`client` and `engine` are the two ends and never import each other. The command line that
runs the engine is `pynenc_lite.server`.

Nothing is imported here: a client process never loads the server engine.
"""
