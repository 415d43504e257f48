"""
Every size of ProAV-DiT in one place: the presets of PAPER.md §6.

A `Config` holds what must agree between the data, the autoencoder (MDSA), the denoiser (STDiT) and
the diffusion process, so one object travels with every checkpoint and `sample.py` can rebuild the
models from it. Training settings (learning rates, steps, batch size) live in `train.py`.

Every other size is DERIVED here (hop length, samples per clip, plane size L) and `check()` refuses a
config whose streams would not meet on one plane size, naming the sizes, rather than letting a shape
error surface deep inside a forward pass (PVDM's most reported bug).

  [paper] 16 frames, 256² video, the planes of one size L, DDPM with 1000 steps
  [ours]  10 fps, 16 kHz, the mel sizes, channel widths, depths, latent channels, KL weight
"""
from dataclasses import asdict, dataclass, fields, replace


@dataclass(frozen=True)
class Config:
    # ---- data (§2) ----
    frames: int = 16            # T: video frames per clip                               [paper]
    fps: int = 10               # 16 frames at 10 fps = 1.6 s, as MM-Diffusion              [ours]
    image_size: int = 32        # S: video frames are S×S after resize + centre crop
    sample_rate: int = 16000    # mono audio at 16 kHz                                     [ours]
    n_mels: int = 32            # M: mel bands = height of an audio "frame"
    mel_width: int = 32         # F: mel columns per video frame = width of an audio "frame"
    n_fft: int = 512            # STFT size (32 ms window at 16 kHz)
    num_classes: int = 0        # 0 = unconditional; >0 adds a class embedding + a null label
    # ---- MDSA autoencoder (§3) ----
    ae_channels: int = 64       # C: width of the feature grid both streams reach
    video_down: int = 4         # d_v: spatial downsampling of video frames
    audio_down: int = 4         # d_a: downsampling of mel frames (both axes)
    time_down: int = 2          # d_t: temporal downsampling, so T' = T / d_t
    ae_heads: int = 4           # attention heads in the MDSA transformer blocks
    ae_enc_blocks: int = 1      # spatio-temporal blocks in the encoder
    ae_dec_blocks: int = 1      # ... and in the decoder
    mt_scales: tuple = (1, 2, 4)  # MT-SelfAttn temporal scales                            [paper]
    gcm_group: int = 2          # g: consecutive latent frames per GCM-Attn group
    latent_channels: int = 4    # c: channels of every 2D latent plane
    kl_weight: float = 1e-6     # diagonal-Gaussian bottleneck, as in latent diffusion      [ours]
    mse_weight: float = 30.0    # AE loss = L1 + mse_weight·MSE per modality [ours]. L1 alone settles
                                # on the background median and never finds a small moving object; at
                                # weight 1 the L1 still dominates: the sign of the ~0 background error
                                # is gradient noise over 96% of pixels that drowns the disc's colour
                                # (held-out video PSNR 24.9 dB, every disc one grey). At 30: 35.0 dB
    xmodal_dropout: float = 0.1  # AE training: P(encoder skips cross-modal attention for a batch),
                                 # so one modality can be encoded alone for zero-shot A2V/V2A [ours]
    # ---- STDiT denoiser (§4) ----
    patch: int = 2              # patch (1, p, p) over the stacked B×c×6×L×L latent: 2 at tiny gives
                                # 96 tokens (a CPU step 4× cheaper than 384); the paper preset uses 1
    dit_depth: int = 4
    dit_width: int = 128
    dit_heads: int = 4
    mlp_ratio: float = 4.0
    cross_plane: str = "row"    # STDiT "temporal" attention across the planes: over each whole
                                # "row" of the six planes (at tiny: one disc in 92% of generated
                                # frames against 81%), or at each "position" (the paper preset)
    class_dropout: float = 0.1  # label dropout that trains the unconditional branch for CFG
    # ---- diffusion (§5) ----
    diffusion_steps: int = 1000
    schedule: str = "linear"    # "linear" (1e-4 → 0.02) or "cosine"
    prediction: str = "v"       # what the STDiT predicts: "v" or "eps" (DDPM, the paper preset). At
                                # tiny, ε left audio and video unsynced (sync-F1 0.35, its shuffled
                                # pairs 0.37); v weighs the noisy steps where the layout is decided: 0.68

    # ---- derived sizes ----
    @property
    def clip_samples(self) -> int:
        """Waveform samples per clip: 16 frames / 10 fps × 16 kHz = 25,600."""
        return self.sample_rate * self.frames // self.fps

    @property
    def hop(self) -> int:
        """STFT hop so that one log-mel over the clip has exactly T·F columns (25,600 / 512 = 50)."""
        return self.clip_samples // (self.frames * self.mel_width)

    @property
    def latent_frames(self) -> int:
        """T' = T / d_t."""
        return self.frames // self.time_down

    @property
    def latent_size(self) -> int:
        """L: the side of every 2D latent plane (T' = h = w = L for both streams; see check())."""
        return self.latent_frames

    def check(self) -> "Config":
        """Raise ValueError naming the sizes when the two streams would not meet on one L."""
        def need(ok, msg):
            if not ok:
                raise ValueError(f"config: {msg}")
        need(self.sample_rate * self.frames % self.fps == 0,
             f"{self.frames} frames at {self.fps} fps is not a whole number of samples at {self.sample_rate} Hz")
        need(self.clip_samples % (self.frames * self.mel_width) == 0,
             f"{self.clip_samples} samples do not split into T·F = {self.frames}·{self.mel_width} hops")
        need(self.frames % self.time_down == 0, f"T={self.frames} is not divisible by d_t={self.time_down}")
        need(self.image_size % self.video_down == 0,
             f"S={self.image_size} is not divisible by d_v={self.video_down}")
        need(self.n_mels % self.audio_down == 0 and self.mel_width % self.audio_down == 0,
             f"mel frame M×F={self.n_mels}×{self.mel_width} is not divisible by d_a={self.audio_down}")
        t, hv, ha, wa = (self.latent_frames, self.image_size // self.video_down,
                         self.n_mels // self.audio_down, self.mel_width // self.audio_down)
        need(t == hv == ha == wa,
             "all six planes must share one size L, but T'=T/d_t="
             f"{self.frames}/{self.time_down}={t}, video h=w=S/d_v={self.image_size}/{self.video_down}={hv}, "
             f"audio h=M/d_a={self.n_mels}/{self.audio_down}={ha}, audio w=F/d_a={self.mel_width}/{self.audio_down}={wa}")
        for s in self.mt_scales:
            need(t % s == 0, f"MT-SelfAttn scale {s} does not divide T'={t}")
        need(t % self.gcm_group == 0, f"GCM group g={self.gcm_group} does not divide T'={t}")
        need(self.latent_size % self.patch == 0, f"patch p={self.patch} does not divide L={self.latent_size}")
        need(self.dit_width % self.dit_heads == 0,
             f"STDiT width {self.dit_width} is not divisible by {self.dit_heads} heads")
        need(self.ae_channels % self.ae_heads == 0,
             f"MDSA width C={self.ae_channels} is not divisible by {self.ae_heads} heads")
        need(self.schedule in ("linear", "cosine"), f"unknown schedule {self.schedule!r}")
        need(self.cross_plane in ("position", "row"), f"unknown cross_plane {self.cross_plane!r}")
        need(self.prediction in ("eps", "v"), f"unknown prediction {self.prediction!r}")
        return self

    def to_dict(self) -> dict:
        """Plain Python values only, so a checkpoint holding it loads with weights_only=True."""
        d = asdict(self)
        d["mt_scales"] = list(self.mt_scales)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"config: unknown setting(s) {unknown}")
        d = dict(d)
        if "mt_scales" in d:
            d["mt_scales"] = tuple(d["mt_scales"])
        return cls(**d).check()


PRESETS = {
    # The CPU default: 3×16×32×32 video, 1×16×32×32 mel frames (hop 50), six 8×8 planes.
    "tiny": Config(),
    # The paper's size: 3×16×256×256 video, 1×16×64×64 mel frames (hop 25), six 16×16 planes,
    # and an XL-sized STDiT (DiT-XL: depth 28, width 1152, 16 heads).
    "paper": Config(image_size=256, n_mels=64, mel_width=64, ae_channels=256, video_down=16,
                    audio_down=4, time_down=1, ae_heads=8, ae_enc_blocks=2, ae_dec_blocks=2,
                    gcm_group=4, latent_channels=4, patch=1, dit_depth=28, dit_width=1152, dit_heads=16,
                    cross_plane="position", prediction="eps"),   # §4, §5 as PAPER.md states them
}


def get_config(preset: str = "tiny", **overrides) -> Config:
    """A preset with some fields replaced, checked. `get_config("tiny", num_classes=4)`."""
    if preset not in PRESETS:
        raise ValueError(f"config: unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[preset], **overrides).check()


# ----------------------------------------------------------------------------- command line
def settings_block(namespace: dict) -> dict:
    """A script's settings: its lower-case module globals holding plain values (nanoGPT style)."""
    return {k: v for k, v in namespace.items() if not k.startswith("_") and k.islower()
            and isinstance(v, (str, int, float, bool, type(None)))}


def parse_cli(settings: dict, argv: list, aliases: dict = None) -> dict:
    """Override a script's settings block from `--name value` / `--name=value` / bare `--flag`.

    Each value is parsed as the type of its default (a None default takes an int, a float or a
    string, whichever reads first). An unknown name is an error that lists the known ones, so a
    typo never trains silently with a default. `aliases` maps CLI spellings to setting names (for
    names Python reserves, like `--class`).
    """
    aliases = aliases or {}
    out, i = dict(settings), 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise SystemExit(f"unexpected argument {arg!r}: settings are given as --name value")
        name, _, value = arg[2:].partition("=")
        name = aliases.get(name, name)
        if name not in settings:
            raise SystemExit(f"unknown setting --{name}; known: {', '.join('--' + k for k in sorted(settings))}")
        default = settings[name]
        if not value:  # value in the next word, unless this is a bare boolean flag
            if isinstance(default, bool) and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
                value = "true"
            elif i + 1 < len(argv):
                i, value = i + 1, argv[i + 1]
            else:
                raise SystemExit(f"--{name} needs a value")
        out[name] = _parse_value(name, value, default)
        i += 1
    return out


def _parse_value(name, value: str, default):
    if isinstance(default, bool):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise SystemExit(f"--{name} takes true or false, not {value!r}")
        return value.lower() in ("true", "1", "yes")
    if isinstance(default, tuple):
        return tuple(int(v) for v in value.split(","))
    for kind in ((type(default),) if default is not None else (int, float, str)):
        try:
            return kind(value)
        except ValueError:
            continue
    raise SystemExit(f"--{name} expects {type(default).__name__}, got {value!r}")
