"""Local, wire-faithful provider servers for tests (127.0.0.1 only, started and stopped by the
tests, bounded in time). ``base`` holds the shared HTTP machinery and fault injection; each
provider module speaks that provider's real wire format."""
