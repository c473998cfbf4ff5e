"""Training settings read by retinafocal's LazyConfig loop (retinafocal.engine.lazy_train)."""
train = dict(
    output_dir="./output",
    # Weights to start from; "" trains from scratch. Ignored by --resume when output_dir holds a
    # checkpoint.
    init_checkpoint="",
    max_iter=90000,
    amp=dict(enabled=False),  # automatic mixed precision (GPU only)
    # Arguments of DistributedDataParallel.
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    # Arguments of detectron2's PeriodicCheckpointer.
    checkpointer=dict(period=5000, max_to_keep=100),
    eval_period=0,  # 0: evaluate only at the end
    log_period=20,
    device="cuda",
    seed=-1,
)

