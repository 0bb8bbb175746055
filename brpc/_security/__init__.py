"""Security without I/O: certificate verification, peer certificates, TLS session tickets."""
