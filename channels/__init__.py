"""Channels: one subpackage per channel, one module per provider or protocol. Each only
translates wire formats to and from channel-neutral messages; none touches the database."""
