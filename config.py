"""
Every size of ProAV-DiT in one place (the presets of PAPER.md §6), and the settings mechanism the
scripts share.

A `Config` holds what must agree between the data, the autoencoder (MDSA), the denoiser (STDiT) and
the diffusion process, so one object travels with every checkpoint and `sample.py` can rebuild the
models from it. Training settings (learning rates, steps, batch size) live in `train.py`. The
bottom of this file is the one command-line mechanism of train, sample, evaluate and bench.

Every other size is DERIVED here (hop length, samples per clip, plane size L) and `check()` refuses a
config whose streams would not meet on one plane size, naming the sizes, rather than letting a shape
error surface deep inside a forward pass (PVDM's most reported bug).

  [paper] 16 frames, 256² video, three 2D latents per modality stacked into one 3D latent
  [ours]  10 fps, 16 kHz, the mel sizes, one plane size L for all six planes, channel widths,
          depths, latent channels, the KL weight, DDPM with 1000 steps, the noise-level mixture
"""
import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Literal, NamedTuple, get_args, get_origin

# The allowed values of the Config fields that take a name (each listed once, here).
Objective = Literal["ddpm", "flow"]
Schedule = Literal["linear", "cosine"]
Prediction = Literal["v", "eps"]
CrossPlane = Literal["row", "position"]


@dataclass(frozen=True)
class Config:
    # ---- data (§2) ----
    frames: int = 16            # T: video frames per clip                                  [paper]
    fps: int = 10               # 16 frames at 10 fps = 1.6 s, as MM-Diffusion                 [ours]
    image_size: int = 32        # S: video frames are S×S after resize + centre crop
    sample_rate: int = 16000    # mono audio at 16 kHz                                        [ours]
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
    ae_dec_blocks: int = 1      # spatio-temporal blocks in the decoder
    ae_full_res_block: bool = False  # a ResBlock at full frame resolution in the stem and the head; off,
                                # the stride-2 conv reads the input conv: a fifth less AE compute at tiny
    mt_scales: tuple = (1, 2, 4)  # MT-SelfAttn temporal scales                               [paper]
    gcm_group: int = 2          # g: consecutive latent frames per GCM-Attn group
    latent_channels: int = 4    # c: channels of every 2D latent plane
    kl_weight: float = 1e-6     # weight of the summed KL against per-element means (PAPER.md §3) [ours]
    mse_weight: float = 30.0    # AE loss = L1 + mse_weight·MSE per modality: the squared term is what
                                # finds a small moving object that L1 leaves at the background [ours]
    xmodal_dropout: float = 0.1  # AE training: P(encoder skips cross-modal attention for a batch),
                                 # so one modality can be encoded alone for A2V/V2A           [ours]
    # ---- STDiT denoiser (§4) ----
    patch: int = 2              # p: patch (1, p, p) over the stacked latent; 2 at tiny: 4× fewer tokens than 1
    dit_depth: int = 4          # STDiT blocks
    dit_width: int = 128        # D: token width
    dit_heads: int = 4          # attention heads per STDiT block
    mlp_ratio: float = 4.0      # MLP hidden width = mlp_ratio·D
    cross_plane: CrossPlane = "row"  # across-plane attention: over each whole "row" of the six planes (a click's
                                # mel band and a wall contact share a row, not a column) or per "position"
    class_dropout: float = 0.1  # label dropout that trains the unconditional branch for CFG
    # ---- diffusion (§5) ----
    objective: Objective = "flow"  # "flow" (rectified flow: x_t = (1 − t)·x0 + t·ε, velocity target) or
                                   # "ddpm" (x_t = √ᾱ·x0 + √(1−ᾱ)·ε, ε or v target, the paper's) [ours]
    flow_shift: float = 2.0     # flow: warp of the level density and grid, t ↦ s·t/(1 + (s−1)·t); 2 spends
                                # more steps at the noisy levels where a clip's timing is decided
    diffusion_steps: int = 1000  # ddpm: num_timesteps of the forward process                  [ours]
    schedule: Schedule = "linear"  # ddpm: "linear" (1e-4 → 0.02) or "cosine"
    prediction: Prediction = "v"  # ddpm: what the STDiT predicts, "v" or "eps": v weighs the noisy steps where
                                # a clip's layout (when the disc hits, when it clicks) is decided
    mix_equal: float = 0.3      # training share of t_v = t_a: the joint generation that sampling starts from
    mix_independent: float = 0.35  # share of independent t_v, t_a: each modality learns to read a
                                   # partner at any other noise level (cross-modal guidance's input)
    mix_clean: float = 0.35     # share with one modality clean (t = 0): A2V and V2A as sampled natively
    min_snr_gamma: float = 0.0  # 0 = plain MSE; γ > 0 weighs level t by min(SNR_t, γ) on the x0 error (Min-SNR-γ)
    learned_guidance: float = 4.0  # w ≠ 1: the denoiser learns the cross-modal-guided prediction at scale w
                                # itself (model guidance), so sampling needs no guidance copies; 1 = none
    learned_class_guidance: float = 1.0  # s ≠ 1 (num_classes > 0): the same for classifier-free guidance on
                                         # the label at scale s, so sampling needs no null-label copy; 1 = none
    learned_guidance_steps: int = 1000  # with w or s ≠ 1: the last this many DiT steps train toward the guided target
    shortcut_steps: int = 1000  # flow: the last this many DiT steps also teach steps of 1/2^k of the way (a
                                # quarter of each batch, self-consistency): the "shortcut" sampler's 1-64
                                # steps, and better motion under DPM-Solver; 0 = off, no step-size input

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
        for name, allowed in (("objective", Objective), ("schedule", Schedule), ("cross_plane", CrossPlane),
                              ("prediction", Prediction)):
            need(getattr(self, name) in get_args(allowed),
                 f"unknown {name} {getattr(self, name)!r}; choose one of {', '.join(get_args(allowed))}")
        need(self.flow_shift > 0, f"flow_shift must be > 0, got {self.flow_shift}")
        need(self.min_snr_gamma >= 0, f"min_snr_gamma must be ≥ 0, got {self.min_snr_gamma}")
        need(self.learned_guidance >= 1, f"learned_guidance must be ≥ 1, got {self.learned_guidance}")
        need(self.learned_class_guidance >= 1,
             f"learned_class_guidance must be ≥ 1, got {self.learned_class_guidance}")
        # the class-guided target contrasts a label with the null label, which label dropout trains
        need(self.learned_class_guidance == 1 or (self.num_classes > 0 and self.class_dropout > 0),
             f"learned_class_guidance {self.learned_class_guidance} needs num_classes > 0 and class_dropout > 0 "
             "(the null label is learned there); set learned_class_guidance 1 for this model")
        need(self.learned_guidance_steps >= 0,
             f"learned_guidance_steps must be ≥ 0, got {self.learned_guidance_steps}")
        need(self.shortcut_steps >= 0, f"shortcut_steps must be ≥ 0, got {self.shortcut_steps}")
        need(self.shortcut_steps == 0 or self.objective == "flow",
             f"shortcut_steps {self.shortcut_steps} needs objective flow (a step along the straight path); "
             "set shortcut_steps 0 for ddpm")
        mix = (self.mix_equal, self.mix_independent, self.mix_clean)
        need(min(mix) >= 0 and sum(mix) > 0, f"the noise-level mixture {mix} needs weights ≥ 0 with a positive sum")
        # the guided target contrasts a stream with its partner at pure noise: only independent levels train that
        need(self.learned_guidance == 1 or self.mix_independent > 0,
             f"learned_guidance {self.learned_guidance} needs mix_independent > 0 (the partner at pure noise "
             "is learned there); set learned_guidance 1 for this mixture")
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
        d.setdefault("ae_full_res_block", True)  # written before the option: the stem had the block
        d.setdefault("objective", "ddpm")   # written before rectified flow: DDPM was the only process
        d.setdefault("flow_shift", 1.0)
        d.setdefault("learned_guidance", 1.0)  # written before model guidance: the sampler guides
        d.setdefault("learned_class_guidance", 1.0)
        d.setdefault("shortcut_steps", 0)      # written before shortcut steps: no step-size input
        if "mix_equal" not in d:  # written before per-modality noise levels: trained on t_v = t_a only
            d.update(mix_equal=1.0, mix_independent=0.0, mix_clean=0.0)
        if "mt_scales" in d:
            d["mt_scales"] = tuple(d["mt_scales"])
        return cls(**d).check()


# Fields that only the denoiser and the diffusion process read: the DiT stage may change these on top
# of the autoencoder's config, and a DiT checkpoint matches its AE on every other field.
DIT_FIELDS = ("num_classes", "patch", "dit_depth", "dit_width", "dit_heads", "mlp_ratio", "cross_plane",
              "class_dropout", "objective", "flow_shift", "diffusion_steps", "schedule", "prediction",
              "mix_equal", "mix_independent", "mix_clean", "min_snr_gamma", "learned_guidance",
              "learned_class_guidance", "learned_guidance_steps", "shortcut_steps")

Preset = Literal["tiny", "paper"]   # the names of PRESETS, for the scripts' --preset
PRESETS = {
    # The CPU default: 3×16×32×32 video, 1×16×32×32 mel frames (hop 50), six 8×8 planes.
    "tiny": Config(),
    # The paper's size: 3×16×256×256 video, 1×16×64×64 mel frames (hop 25), six 16×16 planes,
    # and an XL-sized STDiT (DiT-XL: depth 28, width 1152, 16 heads).
    "paper": Config(image_size=256, n_mels=64, mel_width=64, ae_channels=256, video_down=16,
                    audio_down=4, time_down=1, ae_heads=8, ae_enc_blocks=2, ae_dec_blocks=2,
                    ae_full_res_block=True,
                    gcm_group=4, latent_channels=4, patch=1, dit_depth=28, dit_width=1152, dit_heads=16,
                    cross_plane="position", objective="ddpm", prediction="eps",   # §4, §5 as PAPER.md states them
                    learned_guidance=1.0, shortcut_steps=0),  # model guidance and shortcut steps are
                                                              # measured at tiny only (and need flow)
}


assert tuple(PRESETS) == get_args(Preset), "Preset lists PRESETS' names"


def get_config(preset: Preset = "tiny", **overrides) -> Config:
    """A preset with some fields replaced, checked. `get_config("tiny", num_classes=4)`."""
    if preset not in PRESETS:
        raise ValueError(f"config: unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[preset], **overrides).check()




# ----------------------------------------------------------------------------- command line
# Each script keeps its settings as plain module-level names with a trailing comment (nanoGPT style):
#     steps = 50              # denoising steps
#     mode: Mode = "joint"    # what to generate
# `settings_of` reads that block (values from the module, help from the comments, and the allowed
# values from a `Literal[...]` annotation, declared once where the setting is), `parse_cli`
# overrides it from `--name value`, typed by each default, and answers `--help` with the table.
# A dataclass's fields (Config, sampling.Sampling) are read the same way by `fields_of`; a field
# whose default is None reads "auto" on the command line: the value then follows the checkpoint.
_SETTING_LINE = re.compile(r"^([a-z][a-z0-9_]*)\s*(?::\s*([\w\[\]., \"']+?)\s*)?=\s*(.+?)\s+#\s?(.*)$")
_MORE_HELP = re.compile(r"^\s+#\s?(.*)$")
AUTO = "auto"                 # the command-line spelling of a None default: decided by the checkpoint


class Setting(NamedTuple):
    """One command-line setting: its default, one line of help, the type a value is parsed as, and
    the allowed values (None: any value of that type)."""
    default: object
    help: str
    kind: type
    choices: tuple = None


def _comments(source_file: str, indent: str = "") -> dict:
    """{name: (one-line help, annotation text or None)} from `name[: Annotation] = value  # help`
    lines (with `indent`) and their continuation comment lines, in file order."""
    helps, last = {}, None
    with open(source_file, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            m = _SETTING_LINE.match(line[len(indent):]) if line.startswith(indent) else None
            if m and not line[len(indent)].isspace():
                last = m.group(1)
                helps[last] = [m.group(4).strip(), m.group(2)]
            elif last and line.startswith(indent + " ") and _MORE_HELP.match(line):  # an indented continuation
                helps[last][0] += " " + _MORE_HELP.match(line).group(1).strip()
            else:
                last = None
    return {k: tuple(v) for k, v in helps.items()}


def _literal(annotation):
    """(the value type, the allowed values) of a `Literal[...]` or `Optional[Literal[...]]`, else
    (the plain type of an `Optional[X]`, None), else (None, None)."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is Literal:
        return type(args[0]), tuple(args)
    if args and get_origin(args[0]) is Literal:
        return _literal(args[0])
    return (args[0], None) if len(args) == 1 and isinstance(args[0], type) else (None, None)


def settings_of(namespace: dict, source_file: str) -> dict:
    """A script's settings: {name: Setting} for every commented module-level plain value; an
    annotation names the Literal alias (in `namespace`) that lists its allowed values."""
    settings = {}
    for name, (help_line, annotation) in _comments(source_file).items():
        value = namespace.get(name)
        if isinstance(value, (str, int, float, bool, tuple)):
            choices = _literal(namespace.get(annotation))[1] if annotation else None
            settings[name] = Setting(value, help_line, type(value), choices)
    return settings


def fields_of(cls, source_file: str, indent: str = "    ") -> dict:
    """A dataclass's fields as settings, {name: Setting}, help from the comments in `source_file`;
    `Literal` types give the allowed values, an `Optional[X]` field (default None) parses as X."""
    helps = _comments(source_file, indent=indent)
    out = {}
    for f in fields(cls):
        kind, choices = _literal(f.type)
        out[f.name] = Setting(f.default, helps.get(f.name, ("", None))[0], kind or type(f.default), choices)
    return out


def config_fields() -> dict:
    """Every Config field as a setting, defaults shown for the tiny preset."""
    tiny = PRESETS["tiny"]
    return {k: s._replace(default=getattr(tiny, k)) for k, s in fields_of(Config, __file__).items()}


def parse_cli(argv: list, settings: dict, *, doc: str = "", fields: dict = None, fields_title: str = "",
              aliases: dict = None):
    """Override settings from `--name value`, `--name=value` or a bare boolean `--flag`.

    settings: {name: Setting} (settings_of); fields: a dataclass's fields that may be overridden too
    (fields_of, config_fields), returned apart and listed under `fields_title` in --help.
    → (values {name: value}, overrides {field: value given}). Each value is parsed as its setting's
    type and checked against its allowed values; a bad value or an unknown name exits with one line
    that names the setting. `--help` prints every setting with its default and help, then exits.
    `aliases` maps command-line spellings to setting names (`--class` for `class_label`).
    """
    fields, aliases = fields or {}, aliases or {}
    if "--help" in argv or "-h" in argv:
        print(help_text(settings, fields, doc, fields_title, aliases))
        raise SystemExit(0)
    values, overrides, i = {k: s.default for k, s in settings.items()}, {}, 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise SystemExit(f"unexpected argument {arg!r}: settings are given as --name value (see --help)")
        name, has_value, value = arg[2:].partition("=")
        name = aliases.get(name, name)
        known = settings if name in settings else fields if name in fields else None
        if known is None:
            raise SystemExit(f"unknown setting --{name} (see --help for the list)")
        setting = known[name]
        if not has_value:  # the value is the next word, unless this is a bare boolean flag
            if setting.kind is bool and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
                value = "true"
            elif i + 1 < len(argv):
                i, value = i + 1, argv[i + 1]
            else:
                raise SystemExit(f"--{name} needs a value")
        (values if known is settings else overrides)[name] = parse_value(name, value, setting)
        i += 1
    return values, overrides


def parse_value(name: str, value: str, setting: Setting):
    """`value` as the setting's type (None for "auto" where the default is None), checked against
    its allowed values, or a one-line exit naming `--name`."""
    if setting.default is None and value == AUTO:
        return None
    kind, default = setting.kind, setting.default
    try:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            parsed = value.lower() in ("true", "1", "yes")
        elif kind is tuple:
            item = type(default[0]) if default else int
            parsed = tuple(item(v) for v in value.split(","))
        else:
            parsed = kind(value)
    except ValueError:
        shown = "true or false" if kind is bool else (
            f"comma-separated {type(default[0]).__name__}s, like {','.join(map(str, default))}"
            if kind is tuple else f"a{'n' if kind is int else ''} {kind.__name__}")
        raise SystemExit(f"--{name} takes {shown}{' or auto' if default is None else ''}, not {value!r}") from None
    if setting.choices is not None and parsed not in setting.choices:
        raise SystemExit(f"--{name} must be one of {', '.join(map(str, setting.choices))}, not {value!r}")
    return parsed


def help_text(settings: dict, fields: dict, doc: str, fields_title: str, aliases: dict) -> str:
    """The `--help` page: the script's docstring, then one line per setting: name, default, help,
    and its allowed values."""
    spelled = {v: k for k, v in aliases.items()}
    show = lambda d: (AUTO if d is None else ",".join(map(str, d)) if isinstance(d, tuple)
                      else repr(d) if isinstance(d, str) else str(d))

    def rows(table):
        names = [f"--{spelled.get(k, k)}" for k in table]
        width = max(map(len, names), default=0)
        dwidth = max((len(show(s.default)) for s in table.values()), default=0)
        return [f"  {n:<{width}}  {show(s.default):<{dwidth}}  {s.help}"
                + (f" [{' | '.join(map(str, s.choices))}]" if s.choices else "")
                for n, s in zip(names, table.values())]

    lines = [doc.strip(), "", "settings (--name value; default, then what it does [allowed values]):"] + rows(settings)
    if fields:
        lines += ["", fields_title or "more settings:"] + rows(fields)
    return "\n".join(lines)


def need(ok: bool, message: str) -> None:
    """Exit with `message` (one line, naming the setting) unless ok: a script's check of its values."""
    if not ok:
        raise SystemExit(message)
