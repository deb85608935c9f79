"""DDP and FSDP2 on torch.distributed: estimated per rank in one process (fake process group +
FakeTensorMode), measured with torchrun (every rank records its own breakdown)."""
from ngl_profile.engine.distributed.parallel import DistContext, decoder_layers, setup
from ngl_profile.engine.distributed.tracker import ROLES, ShardedMemoryTracker, local_storages

__all__ = ["DistContext", "setup", "decoder_layers", "ROLES", "ShardedMemoryTracker", "local_storages"]
