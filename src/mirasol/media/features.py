"""Log-mel spectrogram in plain torch, with a fixed normalisation.

    log_mel(waveform, cfg) -> [n_mels, frames]
    audio_features(waveform, cfg)   # what cfg.audio_features asks for: log_mel or Whisper's
    chunk_features(waveform, cfg)   # one chunk of a stream, from its samples and its neighbours'

- Frame j is centred on sample j * hop_length, i.e. on time j * audio_hop_ms: the signal is
  zero-padded by n_fft / 2 on both sides (silence outside the given samples, no reflection), so
  audio frame j and video frames cover the same seconds in every chunk.
- By default there are len(waveform) // hop_length frames: the frames centred inside the signal.
  For cfg.clip_seconds of audio that is exactly cfg.audio_frames (the frame centred on the clip's
  end belongs to the next clip and is dropped). `num_frames` pads with silence or trims to a count.
- STFT: periodic Hann window of win_length (25 ms), n_fft = next power of two >= win_length, hop
  of hop_length (10 ms). Power |X|^2 divided by the window's energy, so that white noise of
  variance s^2 has power s^2 in every bin, whatever the window length or sample rate.
- Mel filterbank: HTK mel scale (mel = 2595 log10(1 + f / 700)), n_mels triangles from 0 Hz to
  sample_rate / 2. Each triangle is integrated over every FFT bin's frequency span (so narrow
  low-frequency filters are never empty) and normalised to sum 1: a mel value is the mean power
  over its band.
- Values: (log(mel + 1e-6) - LOG_MEL_SHIFT) / LOG_MEL_SCALE with fixed constants (not per-clip
  statistics, so loudness survives). They put the mixed speech / music / effects audio of the
  sample clips at about mean 0, spread 1 (a full-scale 1 kHz sine peaks at +3.5 to +3.8).
  Silence (all-zero input) maps exactly to SILENCE = -1.6355.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from mirasol.config import MirasolConfig

LOG_FLOOR = 1e-6  # about -60 dB relative to full-scale white noise
# Fixed affine normalisation, measured once on the sample clips' audio (Opus, Vorbis, MP3: speech,
# music, effects): raw log-mel averaged -8.2 to -8.7 per file (32 to 128 mels) with spread 2.1 to
# 4.0 (pooled 3.0). Rounded, so they never change with the data.
LOG_MEL_SHIFT = -8.5
LOG_MEL_SCALE = 3.25
# The value of an all-zero input (-1.6355), computed with the same float32 operations as log_mel
# so that `spec == SILENCE` holds exactly.
SILENCE = float((torch.log(torch.zeros((), dtype=torch.float32) + LOG_FLOOR) - LOG_MEL_SHIFT) / LOG_MEL_SCALE)

# Sub-points per FFT bin when integrating the mel triangles.
_OVERSAMPLE = 16


def fft_size(win_length: int) -> int:
    """The smallest power of two >= win_length."""
    return 1 << max(0, win_length - 1).bit_length()


def hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


@lru_cache(maxsize=16)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    """[n_mels, n_fft // 2 + 1] float32 weights; rows sum to 1. Cached: do not modify in place."""
    edges = mel_to_hz(np.linspace(0.0, hz_to_mel(sample_rate / 2), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    n_bins = n_fft // 2 + 1
    bin_hz = sample_rate / n_fft
    # Frequencies of _OVERSAMPLE evenly spaced points across each bin's span [k - 1/2, k + 1/2] * bin_hz.
    offsets = (np.arange(_OVERSAMPLE) + 0.5) / _OVERSAMPLE - 0.5
    freqs = ((np.arange(n_bins)[:, None] + offsets[None, :]) * bin_hz).reshape(-1)
    rising = (freqs - lower) / (centre - lower)
    falling = (upper - freqs) / (upper - centre)
    triangles = np.clip(np.minimum(rising, falling), 0.0, None)
    weights = triangles.reshape(n_mels, n_bins, _OVERSAMPLE).mean(axis=-1)
    weights /= weights.sum(axis=-1, keepdims=True)
    return torch.from_numpy(weights.astype(np.float32))


def mel_band_centres(sample_rate: int, n_mels: int) -> np.ndarray:
    """Centre frequency in Hz of each mel band of mel_filterbank."""
    return mel_to_hz(np.linspace(0.0, hz_to_mel(sample_rate / 2), n_mels + 2))[1:-1]


@lru_cache(maxsize=16)
def _hann(win_length: int) -> torch.Tensor:
    return torch.hann_window(win_length, periodic=True, dtype=torch.float32)


def _centred_power(waveform, hop: int, win: int, n_fft: int, num_frames: int | None) -> tuple[int, torch.Tensor]:
    """(frames, |STFT|^2 [..., n_fft // 2 + 1, frames]): frame j centred on sample j * hop, the signal
    zero-padded (silence) outside the given samples; len // hop frames unless num_frames says."""
    x = torch.as_tensor(waveform, dtype=torch.float32)
    frames = x.shape[-1] // hop if num_frames is None else num_frames
    if frames <= 0:
        return frames, torch.zeros(*x.shape[:-1], n_fft // 2 + 1, 0)
    # Frame j reads padded[j*hop : j*hop + n_fft] = samples centred on j*hop.
    needed = (frames - 1) * hop + n_fft
    left = n_fft // 2
    x = x[..., :needed - left]
    x = torch.nn.functional.pad(x, (left, needed - left - x.shape[-1]))
    spec = torch.stft(x.reshape(-1, needed), n_fft, hop_length=hop, win_length=win, window=_hann(win),
                      center=False, return_complex=True)
    power = spec.real.square() + spec.imag.square()
    return frames, power.reshape(*x.shape[:-1], *power.shape[-2:])


def log_mel(waveform, cfg: MirasolConfig, num_frames: int | None = None) -> torch.Tensor:
    """Normalised log-mel spectrogram of mono audio at cfg.sample_rate.

    waveform: [..., samples] float (numpy or torch). Returns float32 [..., cfg.n_mels, frames]."""
    n_fft = fft_size(cfg.win_length)
    frames, power = _centred_power(waveform, cfg.hop_length, cfg.win_length, n_fft, num_frames)
    if frames <= 0:
        return torch.full((*power.shape[:-2], cfg.n_mels, 0), SILENCE)
    power = power / _hann(cfg.win_length).square().sum()
    mel = torch.matmul(mel_filterbank(cfg.sample_rate, n_fft, cfg.n_mels), power)
    return (torch.log(mel + LOG_FLOOR) - LOG_MEL_SHIFT) / LOG_MEL_SCALE


# --- Whisper's own log-mel (for `audio_backbone`, audio_features='whisper') ---------------------
# Written from the Whisper paper's front end: 25 ms Hann window as a 400-point FFT (no power-of-two
# rounding), 10 ms hop, power |X|^2 (not divided by the window energy), Slaney-scale mel filters
# with Slaney area normalisation from 0 Hz to 8 kHz, log10 with a floor of 1e-10. Where it differs
# from `log_mel`: those four points, and the normalisation. Whisper clamps to (clip max - 8) and
# maps x -> (x + 4) / 4 using the maximum over its whole 30 s input; here the clip's features stay
# raw log10 and the model's Whisper wrapper does that per chunk (model/backbones.py), so that a
# chunk never depends on the loudness of later chunks. Frames are centred on j * hop with zero
# padding at the clip's edges (Whisper reflects), exactly as `log_mel`, so chunks stay aligned.
WHISPER_FLOOR = 1e-10
WHISPER_SILENCE = -10.0  # log10(WHISPER_FLOOR): the value of an all-zero input


def slaney_hz_to_mel(hz):
    hz = np.asarray(hz, dtype=np.float64)
    linear = 3.0 * hz / 200.0  # 200/3 Hz per mel below 1 kHz
    log_part = 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) * 27.0 / np.log(6.4)
    return np.where(hz >= 1000.0, log_part, linear)


def slaney_mel_to_hz(mel):
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (mel - 15.0)), 200.0 * mel / 3.0)


@lru_cache(maxsize=8)
def slaney_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    """[n_mels, n_fft // 2 + 1] float32: triangles on FFT bin centres, each of area-normalised height."""
    edges = slaney_mel_to_hz(np.linspace(slaney_hz_to_mel(0.0), slaney_hz_to_mel(sample_rate / 2), n_mels + 2))
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs - lower) / (centre - lower)
    falling = (upper - freqs) / (upper - centre)
    weights = np.clip(np.minimum(rising, falling), 0.0, None) * (2.0 / (upper - lower))
    return torch.from_numpy(weights.astype(np.float32))


def whisper_log_mel(waveform, cfg: MirasolConfig, num_frames: int | None = None) -> torch.Tensor:
    """Raw log10 Whisper mel [..., cfg.n_mels, frames] of mono audio at cfg.sample_rate (16 kHz)."""
    frames, power = _centred_power(waveform, cfg.hop_length, cfg.win_length, cfg.win_length, num_frames)
    if frames <= 0:
        return torch.full((*power.shape[:-2], cfg.n_mels, 0), WHISPER_SILENCE)
    mel = torch.matmul(slaney_filterbank(cfg.sample_rate, cfg.win_length, cfg.n_mels), power)
    return torch.log10(mel.clamp(min=WHISPER_FLOOR))


def silence_value(cfg: MirasolConfig) -> float:
    """The value every feature of an all-zero input takes, for the audio features cfg asks for."""
    return WHISPER_SILENCE if cfg.audio_features == "whisper" else SILENCE


def audio_features(waveform, cfg: MirasolConfig, num_frames: int | None = None) -> torch.Tensor:
    """The audio features cfg asks for: `log_mel` (ours) or Whisper's raw log10 mel."""
    if cfg.audio_features == "whisper":
        return whisper_log_mel(waveform, cfg, num_frames)
    return log_mel(waveform, cfg, num_frames)


# --- One chunk's features, from its samples and a little of its neighbours' --------------------

def context_samples(cfg: MirasolConfig) -> int:
    """Samples of the neighbouring chunks that a chunk's edge frames read on each side: whole hops
    covering half of the FFT window that cfg.audio_features uses."""
    n_fft = cfg.win_length if cfg.audio_features == "whisper" else fft_size(cfg.win_length)
    return math.ceil(n_fft / 2 / cfg.hop_length) * cfg.hop_length


def chunk_features(waveform, cfg: MirasolConfig) -> torch.Tensor:
    """[n_mels, audio_frames_per_chunk] features (cfg.audio_features) of one chunk, given its samples
    with context_samples(cfg) more on each side (silence where there is no neighbour): the chunk's
    frames of one spectrogram of the whole stream."""
    skip = context_samples(cfg) // cfg.hop_length
    return audio_features(waveform, cfg, num_frames=skip + cfg.audio_frames_per_chunk)[:, skip:].contiguous()
