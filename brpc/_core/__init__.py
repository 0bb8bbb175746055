"""The connection core: one link per connection, its hello, control stream and drain."""
