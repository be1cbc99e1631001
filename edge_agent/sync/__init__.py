"""The edge ⇄ hub sync protocol: frames, codec, filters and the state machines.

Everything here is pure: no asyncio, sockets, NATS or SQLite (a test checks the
imports). The edge's ``websocket_output`` and the hub's ``websocket_input`` are thin
shells around it.
"""
