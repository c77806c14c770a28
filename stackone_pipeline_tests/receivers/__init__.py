"""Local stand-ins for the sinks' services: real HTTP servers on 127.0.0.1 that speak each
service's protocol and refuse what the real one refuses (see `server.Receiver`)."""
