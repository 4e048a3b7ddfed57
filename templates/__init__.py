# Shipped TOML layers; installed as the package data builder.layers.
