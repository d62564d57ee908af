"""Push a saved pruned model folder to the Hugging Face Hub.

`push_pruned_model(save_dir, repo_id)` creates the repo if needed and commits the whole folder written by
`SNPPruner.prune(..., save_dir=...)`: weights, config (with `auto_map`), modeling files, image
processor, `snp_config.json`, pruning report/plan and the model card with its figure when present. It goes through
the regular `huggingface_hub.HfApi`, so the endpoint, the token and the transfer backend (Xet or LFS) are the
library's. Failures are raised as `HubPushError` saying what went wrong and what to do; the local folder is only
read, never changed.
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled


try:  # the HTTP client huggingface_hub is built on: httpx2 from 2.x, httpx in 1.x
    from httpx2 import TransportError
except ImportError:  # pragma: no cover - depends on the installed huggingface_hub
    from httpx import TransportError


REQUIRED_FILES = ("config.json", "model.safetensors")
TOKENS_PAGE = "https://huggingface.co/settings/tokens"


class HubPushError(RuntimeError):
    """Pushing to the Hub failed. `status_code` is the HTTP status when the Hub answered, else None."""

    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code


def push_pruned_model(
    save_dir: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload SNP-pruned model",
    endpoint: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
) -> str:
    """Upload every file of `save_dir` to the model repo `repo_id` (created if missing) and return the commit URL.

    `token` defaults to the logged-in one (`hf auth login` or `HF_TOKEN`); `endpoint` to `HF_ENDPOINT` or
    https://huggingface.co. `private` only applies when the repo is created. `revision` is the branch to commit to,
    `create_pr=True` opens a pull request instead of committing. Raises `ValueError` if `save_dir`
    is not a saved model, `HubPushError` if the Hub cannot be reached or refuses the push.
    """
    folder = Path(save_dir)
    if not folder.is_dir():
        raise ValueError(
            f"`save_dir` {str(save_dir)!r} is not a folder: save the pruned model first, e.g. "
            "`SNPPruner.prune(..., save_dir=...)` or `model.save_pretrained(...)`."
        )
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise ValueError(
            f"{folder} is missing {' and '.join(missing)}, so it is not a saved pruned model: save it with "
            "`SNPPruner.prune(..., save_dir=...)` or `model.save_pretrained(...)` before pushing."
        )
    if not isinstance(repo_id, str) or "" in repo_id.split("/") or repo_id.count("/") > 1:
        raise ValueError(f"`repo_id` must look like 'name' or 'namespace/name', got {repo_id!r}.")

    kept_locally = f"The model is saved locally in {folder}."
    # Without a token huggingface_hub would send the calls unauthenticated and get a 401: say it up front.
    token = token or get_token()
    if not token:
        raise HubPushError(f"No Hugging Face token: run `hf auth login` or pass token=... . {kept_locally}")
    api = HfApi(endpoint=endpoint, token=token)

    try:
        # `create_repo` returns the full id, with the user's namespace when `repo_id` has none.
        repo_id = api.create_repo(repo_id, token=token, private=private, exist_ok=True).repo_id
        commit = api.upload_folder(
            folder_path=folder,
            repo_id=repo_id,
            token=token,
            repo_type="model",
            commit_message=commit_message,
            revision=revision,
            create_pr=create_pr,
        )
    except Exception as err:
        problem = _describe(err, api.endpoint, repo_id)
        if problem is None:
            raise
        message, status = problem
        raise HubPushError(f"{message} {kept_locally}", status_code=status) from err
    return str(commit.commit_url)


def _describe(err: BaseException, endpoint: str, repo_id: str) -> tuple[str, int | None] | None:
    """A user-facing explanation of a failed push, or None when `err` is not a Hub/network error."""
    # upload helpers wrap the HTTP error (e.g. "Error while uploading 'x' to the Hub."): look down the chain
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OfflineModeIsEnabled):
            return "HF_HUB_OFFLINE is set, so huggingface_hub makes no network calls: unset it to push.", None
        if isinstance(err, HfHubHTTPError):
            return _describe_http(err, endpoint, repo_id)
        if isinstance(err, (TransportError, ConnectionError, TimeoutError)):
            return (
                f"Could not reach {endpoint}: {str(err) or type(err).__name__}. Check the network connection, "
                "and `endpoint` / HF_ENDPOINT if you use a mirror.",
                None,
            )
        err = err.__cause__ or err.__context__
    return None


def _describe_http(err: HfHubHTTPError, endpoint: str, repo_id: str) -> tuple[str, int | None]:
    status = err.response.status_code if err.response is not None else None
    said = f": {err.server_message}" if err.server_message else ""
    if status == 401:
        message = (
            f"{endpoint} rejected the token (401 Unauthorized{said}): it is invalid, expired or revoked. Create a "
            f"token with write access at {TOKENS_PAGE}, then run `hf auth login` or pass token=... ."
        )
    elif status == 403:
        message = (
            f"The token may not write to {repo_id!r} (403 Forbidden{said}). Use a token with write access (a "
            f"fine-grained token needs write permission on that namespace, see {TOKENS_PAGE}), or push to a "
            "namespace you own."
        )
    elif status == 404:
        message = (
            f"{repo_id!r} was not found on {endpoint} (404 Not Found{said}). Check the namespace (your user name "
            "or an organization you belong to) and the repo name."
        )
    else:
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        message = f"{endpoint} failed while pushing to {repo_id!r} (HTTP {status}{said}): {first_line}. Retry later."
    return message, status


__all__ = ["HubPushError", "push_pruned_model"]
