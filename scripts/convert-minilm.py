#!/usr/bin/env python3
"""Convert sentence-transformers all-MiniLM-L6-v2 (a Hugging Face `BertModel` directory with
model.safetensors, config.json, tokenizer.json, ...) to GGUF, without torch or transformers.

It writes what the pinned llama.cpp's `convert_hf_to_gguf.py --outtype {f32,f16,bf16}` writes
for this model, byte for byte (scripts/fetch-models.sh checks the sha256 of the result against
vendor/models-convert.lock, whose sums are those of the shared test models). It follows the same
code path (conversion/base.py `ModelBase`/`TextModel`, conversion/bert.py `BertModel`) and calls
the same gguf-py (the copy in the pinned llama.cpp tree, vendor/llama.cpp/gguf-py, which is what
convert_hf_to_gguf.py imports; the gguf package on PyPI is older and writes different keys).
The two steps convert_hf_to_gguf.py does with transformers are done from tokenizer.json:

  * the vocabulary: `AutoTokenizer.vocab` of a WordPiece tokenizer is tokenizer.json's
    model.vocab plus its added tokens; every added token here is special (CONTROL);
  * `tokenizer.ggml.pre`: convert_hf_to_gguf.py hashes the tokenizer's encoding of a check text,
    and a BERT uncased WordPiece tokenizer (BertNormalizer lowercase + BertPreTokenizer) hashes
    to the entry it names "jina-v2-en". This script refuses any other tokenizer pipeline.

Anything this model does not have (other architectures, pytorch_model.bin, sharded weights,
classifier heads, tokenizers other than the above) is refused rather than guessed.

Usage: convert-minilm.py --gguf-py DIR MODEL_DIR --outtype {f32,f16,bf16} --outfile OUT.gguf
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def fail(msg: str) -> None:
    sys.exit(f"convert-minilm: {msg}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path, help="directory holding config.json, model.safetensors, tokenizer.json")
    ap.add_argument("--outtype", choices=["f32", "f16", "bf16"], required=True)
    ap.add_argument("--outfile", type=Path, required=True)
    ap.add_argument("--gguf-py", type=Path, required=True,
                    help="the pinned llama.cpp's gguf-py directory (vendor/llama.cpp/gguf-py)")
    args = ap.parse_args()

    # the same import convert_hf_to_gguf.py does (it puts its own gguf-py first on sys.path)
    if not (args.gguf_py / "gguf" / "__init__.py").is_file():
        fail(f"{args.gguf_py} is not a gguf-py directory (run scripts/build-llama.sh)")
    sys.path.insert(1, str(args.gguf_py))
    import gguf  # noqa: E402

    if not Path(gguf.__file__).resolve().is_relative_to(args.gguf_py.resolve()):
        fail(f"imported gguf from {gguf.__file__}, not from {args.gguf_py}")

    d: Path = args.model
    hparams = json.loads((d / "config.json").read_text(encoding="utf-8"))
    if hparams.get("architectures") != ["BertModel"] or hparams.get("model_type") != "bert":
        fail(f"not a plain BertModel: architectures={hparams.get('architectures')}")
    for key in ("id2label", "text_config", "rope_scaling", "rope_parameters", "quantization_config"):
        if key in hparams:
            fail(f"config.json has {key!r}, which this converter does not handle")
    if not (d / "model.safetensors").is_file() or (d / "model.safetensors.index.json").exists():
        fail("expected a single model.safetensors")

    ftype = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
    }[args.outtype]
    qtype = {
        "f32": gguf.GGMLQuantizationType.F32,
        "f16": gguf.GGMLQuantizationType.F16,
        "bf16": gguf.GGMLQuantizationType.BF16,
    }[args.outtype]
    arch = gguf.MODEL_ARCH.BERT
    block_count = hparams["num_hidden_layers"]
    tensor_map = gguf.get_tensor_name_map(arch, block_count)
    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[arch])

    # ---- tensors (ModelBase.prepare_tensors), in the name order SafetensorsLocal gives
    with gguf.utility.SafetensorsLocal(d / "model.safetensors") as parts:
        for name, t in parts.items():
            # BertModel.filter_tensors: the pooler and position ids are not used for embeddings
            if name.startswith("bert."):
                name = name[5:]
            if name.endswith(".gamma"):
                name = name[:-6] + ".weight"
            if name.endswith(".beta"):
                name = name[:-5] + ".bias"
            if name in ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"):
                continue
            if name.startswith(("cls.predictions", "cls.seq_relationship")):
                continue
            if t.dtype != "F32":
                fail(f"{name}: dtype {t.dtype}, expected F32")
            data = t.mmap_bytes().view(np.float32).reshape(t.shape)
            new_name = tensor_map.get_name(key=name, try_suffixes=(".weight", ".bias"))
            if new_name is None:
                fail(f"cannot map tensor {name!r}")
            # which tensors stay F32 whatever the outtype (prepare_tensors' rules for BERT):
            # 1-D tensors, norms, position and token-type embeddings, and anything not a weight
            keep_f32 = (
                data.ndim <= 1
                or new_name.endswith("_norm.weight")
                or new_name in ("position_embd.weight", "token_types.weight")
                or not new_name.endswith(".weight")
            )
            q = gguf.GGMLQuantizationType.F32 if keep_f32 else qtype
            out = gguf.quants.quantize(data, q)
            writer.add_tensor(new_name, out, raw_dtype=q)

    # ---- metadata (ModelBase.prepare_metadata, TextModel.prepare_metadata)
    total_params, shared_params, expert_params, expert_count = writer.get_total_parameter_count()
    # gguf.Metadata falls back on the directory's name for fields config.json's _name_or_path
    # leaves empty (basename, version, ...): "all-MiniLM-L6-v2" would add general.basename and
    # general.version. A neutral name such as "model" adds nothing, as in the shared files.
    if any(gguf.Metadata.get_model_id_components(d.resolve().name, total_params)[2:]):
        fail(f"the model directory's name {d.resolve().name!r} would leak into the metadata; "
             "use a neutral name such as 'model'")
    meta = gguf.Metadata.load(None, d, None, total_params)
    if meta.name is None:
        meta.name = d.name
    if meta.size_label is None and total_params > 0:
        meta.size_label = gguf.size_label(total_params, shared_params, expert_params, expert_count)
    writer.add_type(gguf.GGUFType.MODEL)
    meta.set_gguf_meta_model(writer)

    # TextModel.set_gguf_parameters, then BertModel's additions
    writer.add_block_count(block_count)
    writer.add_context_length(hparams["max_position_embeddings"])
    writer.add_embedding_length(hparams["hidden_size"])
    writer.add_feed_forward_length(hparams["intermediate_size"])
    writer.add_head_count(hparams["num_attention_heads"])
    writer.add_layer_norm_eps(hparams["layer_norm_eps"])
    writer.add_file_type(ftype)
    writer.add_causal_attention(False)
    pooling = pooling_type(d, gguf)
    if pooling is not None:
        writer.add_pooling_type(pooling)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    # ---- vocabulary (BertModel.set_vocab)
    tokens, toktypes = wordpiece_vocab(d, hparams, gguf)
    writer.add_token_type_count(hparams.get("type_vocab_size", 1))

    def phantom(tok: str, toktype: int) -> str:
        if toktype == gguf.TokenType.CONTROL:
            return tok
        if tok.startswith("##"):
            return tok[2:]
        return "\u2581" + tok

    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("jina-v2-en")
    writer.add_token_list(list(map(phantom, tokens, toktypes)))
    writer.add_token_types(toktypes)
    gguf.SpecialVocab(d, n_vocab=len(tokens)).add_to_gguf(writer)

    # ---- write (ModelBase.write), through a temporary name so a partial file never has OUT's name
    part = args.outfile.with_name(args.outfile.name + ".part")
    writer.write_header_to_file(path=part)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    part.replace(args.outfile)


def pooling_type(d: Path, gguf):
    """TextModel._try_set_pooling_type: the sentence-transformers Pooling module's mode."""
    modules = d / "modules.json"
    if not modules.is_file():
        return None
    path = next((m["path"] for m in json.loads(modules.read_text(encoding="utf-8"))
                 if m["type"].endswith("Pooling")), None)
    if path is None:
        return None
    cfg = json.loads((d / path / "config.json").read_text(encoding="utf-8"))
    if cfg.get("pooling_mode_mean_tokens"):
        return gguf.PoolingType.MEAN
    if cfg.get("pooling_mode_cls_token"):
        return gguf.PoolingType.CLS
    if cfg.get("pooling_mode_lasttoken"):
        return gguf.PoolingType.LAST
    fail(f"unsupported pooling config {cfg}")


def wordpiece_vocab(d: Path, hparams: dict, gguf) -> tuple[list[str], list[int]]:
    """TextModel.get_vocab_base for a WordPiece tokenizer.json, without transformers."""
    tok = json.loads((d / "tokenizer.json").read_text(encoding="utf-8"))
    model = tok["model"]
    norm = tok.get("normalizer") or {}
    # the pipeline whose check-text hash convert_hf_to_gguf.py maps to "jina-v2-en"
    if (model.get("type") != "WordPiece" or model.get("continuing_subword_prefix") != "##"
            or norm.get("type") != "BertNormalizer" or norm.get("lowercase") is not True
            or (tok.get("pre_tokenizer") or {}).get("type") != "BertPreTokenizer"):
        fail("tokenizer.json is not a BERT uncased WordPiece tokenizer")
    vocab: dict[str, int] = dict(model["vocab"])
    added = {a["content"]: a for a in tok.get("added_tokens", [])}
    for content, a in added.items():
        # a non-special added token would be USER_DEFINED, and a non-normalized one would be
        # re-encoded by transformers: neither happens for this model, so neither is implemented
        if not a["special"]:
            fail(f"added token {content!r} is not special")
        vocab[content] = a["id"]
    vocab_size = hparams.get("vocab_size", len(vocab))
    reverse = {i: t for t, i in vocab.items()}
    if max(reverse) >= vocab_size:
        fail("token id beyond vocab_size")
    tokens: list[str] = []
    toktypes: list[int] = []
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            toktypes.append(gguf.TokenType.UNUSED)
        else:
            t = reverse[i]
            tokens.append(t)
            toktypes.append(gguf.TokenType.CONTROL if t in added else gguf.TokenType.NORMAL)
    return tokens, toktypes


if __name__ == "__main__":
    main()
