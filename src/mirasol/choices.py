"""The closed sets of names that options and config keys take, each spelled once.

The modules that own a concept validate against these tuples and the command line offers them as
its choices; this module imports nothing, so `mirasol --help` stays instant.
"""

# model and media (MirasolConfig keys)
COMBINERS = ("transformer", "ttm")
LATENT_LOSSES = ("mse", "cosine")
RESIZE_MODES = ("crop", "letterbox")
CLIP_WINDOWS = ("start", "center", "uniform")
MISSING_AUDIO = ("zeros", "skip", "error")
AUDIO_FEATURES = ("log_mel", "whisper")

# training (train.* keys, `bench step --precision`)
PRECISIONS = ("auto", "fp32", "bf16")
STRATEGIES = ("ddp", "fsdp")

# the clip store: frame codecs, and how `prepare --store` / data.store choose among them
CODECS = ("raw", "h264", "jpeg")
STORES = ("auto", *CODECS, "none")

# test-time controls (`evaluate --media`): "none", then what each takes away
MEDIA_CONTROLS = ("none", "zero_audio", "zero_video", "zero_media", "shuffle")

# `convert --format`: the official annotation formats the adapters read
CONVERT_FORMATS = ("msrvtt-qa", "activitynet-qa", "nextqa", "music-avqa", "vggsound", "ave")

# `synth --world`
WORLDS = ("default", "long")

# File extensions read as video (lower case, no dot), in the order a lookup tries them.
VIDEO_EXTENSIONS = ("mp4", "mkv", "webm", "avi", "mov", "m4v", "mpg", "mpeg", "ts", "flv", "ogv", "3gp", "wmv")
