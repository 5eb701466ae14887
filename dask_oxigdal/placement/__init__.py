"""Where data lives and how it moves: replicas, the shared cache, topology, shuffle admission."""
