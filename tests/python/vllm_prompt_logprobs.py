"""Run by test_vllm_load.py with the interpreter FTD_VLLM_PYTHON names (one that has vLLM): loads
an HF checkpoint directory into vLLM (CPU or GPU, whatever that vLLM is built for) and prints, as
one JSON line, the top-k log-probabilities vLLM gives each prompt position after the first.
    python vllm_prompt_logprobs.py MODEL_DIR '[ids]' DTYPE TOPK"""
import json
import os
import sys

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")        # GiB; the models here are tiny
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # one process: no spawn from a script


def main():
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    model_dir, ids, dtype, topk = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    llm = LLM(model=model_dir, dtype=dtype, skip_tokenizer_init=True, enforce_eager=True, max_model_len=128,
              max_num_seqs=1, seed=0)
    params = SamplingParams(max_tokens=1, prompt_logprobs=topk, detokenize=False)
    out = llm.generate([TokensPrompt(prompt_token_ids=ids)], params)
    per_position = [{str(tok): lp.logprob for tok, lp in d.items()} for d in out[0].prompt_logprobs[1:]]
    print("VLLM_LOGPROBS " + json.dumps(per_position), flush=True)


if __name__ == "__main__":
    main()
