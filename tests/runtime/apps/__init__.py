"""ASGI apps the runtime tests start as real server subprocesses."""
