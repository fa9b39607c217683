"""OTLP receivers: gRPC (``otlp_grpc``) and HTTP (``otlp_http``), sharing ``codec``."""
