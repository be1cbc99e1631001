"""NATS: the embedded server's supervisor, the client connection and the JetStream layout."""
