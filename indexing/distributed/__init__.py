"""Scale-out (#28): the build's stages handed to Ray workers. `ray_embed` distributes the embed job's chunk
calls over an actor pool; the chunk files, ids and resume rules are the local job's own (indexing.embed)."""
