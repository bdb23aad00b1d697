"""End-to-end check of `fusillade serve` with the official OpenAI Python SDK.

Run by tests/sdk_e2e.rs against a live server and a mock upstream:
    OPENAI_BASE_URL=http://127.0.0.1:PORT/v1 OPENAI_API_KEY=KEY \
    E2E_OTHER_KEY=KEY2 python tests/sdk/e2e.py WORKDIR

The mock answers 400 to every custom_id starting with `fail-`, and never
answers requests for model `slow`, counting in WORKDIR/slow-calls those that
arrived (so a batch of them is cancelled while its calls run). Exits non-zero with a message on the first failed
check.
"""

import collections
import json
import os
import sys
import time

import openai

WORK = sys.argv[1]
CHAT = "/v1/chat/completions"
TERMINAL = {"completed", "failed", "expired", "cancelled"}

client = openai.OpenAI(timeout=60)
other = openai.OpenAI(api_key=os.environ["E2E_OTHER_KEY"], timeout=60)


def check(cond, message):
    if not cond:
        print(f"e2e check failed: {message}", file=sys.stderr)
        sys.exit(1)


def write_input(name, ids, model="m"):
    path = os.path.join(WORK, name)
    with open(path, "w") as f:
        for cid in ids:
            body = {"model": model, "messages": [{"role": "user", "content": f"hi {cid}"}]}
            f.write(json.dumps({"custom_id": cid, "method": "POST", "url": CHAT, "body": body}) + "\n")
    return path


def wait(batch_id, statuses=TERMINAL, timeout=120):
    deadline = time.time() + timeout
    while True:
        b = client.batches.retrieve(batch_id)
        if b.status in statuses:
            return b
        check(time.time() < deadline, f"batch {batch_id} stuck in {b.status}")
        time.sleep(0.2)


def lines_of(file_id):
    text = client.files.content(file_id).text
    return [json.loads(l) for l in text.splitlines() if l.strip()]


# 1. Upload, create, poll, download output and errors.
ids = [f"ok-{i}" for i in range(8)] + ["fail-1", "fail-2"]
path = write_input("input.jsonl", ids)
with open(path, "rb") as fh:
    uploaded = client.files.create(file=fh, purpose="batch")
check(uploaded.id.startswith("file-"), f"file id {uploaded.id}")
check(uploaded.purpose == "batch", f"purpose {uploaded.purpose}")
check(uploaded.bytes == os.path.getsize(path), f"bytes {uploaded.bytes}")
check(client.files.retrieve(uploaded.id).filename == "input.jsonl", "filename kept")
with open(path, "rb") as fh:
    check(client.files.content(uploaded.id).read() == fh.read(), "input content round trip")

batch = client.batches.create(
    input_file_id=uploaded.id,
    endpoint=CHAT,
    completion_window="24h",
    metadata={"suite": "e2e"},
)
check(batch.id.startswith("batch_"), f"batch id {batch.id}")
check(batch.status in ("validating", "in_progress"), f"status {batch.status}")
check(batch.metadata == {"suite": "e2e"}, f"metadata {batch.metadata}")
done = wait(batch.id)
check(done.status == "completed", f"final status {done.status}")
rc = done.request_counts
check((rc.total, rc.completed, rc.failed) == (10, 8, 2), f"counts {rc}")
check(done.completed_at is not None and done.in_progress_at is not None, "timestamps set")
check(done.usage is not None and done.usage.total_tokens == 8 * 17, f"usage {done.usage}")

out = lines_of(done.output_file_id)
err = lines_of(done.error_file_id)
seen = collections.Counter(l["custom_id"] for l in out + err)
check(set(seen) == set(ids) and all(n == 1 for n in seen.values()), f"each line once: {seen}")
check(all(l["response"]["status_code"] == 200 and l["error"] is None for l in out), "output lines")
check(sorted(l["custom_id"] for l in err) == ["fail-1", "fail-2"], "error lines")
check(all(l["response"]["status_code"] == 400 for l in err), "errors keep the upstream status")
check(client.files.retrieve(done.output_file_id).purpose == "batch_output", "output purpose")
check(client.files.retrieve(done.error_file_id).purpose == "batch_output", "error purpose")

# 2. A batch cancelled while its requests are held upstream.
slow_ids = [f"slow-{i}" for i in range(4)]
with open(write_input("slow.jsonl", slow_ids, model="slow"), "rb") as fh:
    slow_file = client.files.create(file=fh, purpose="batch")
slow = client.batches.create(input_file_id=slow_file.id, endpoint=CHAT, completion_window="1h")


def slow_calls():
    try:
        with open(os.path.join(WORK, "slow-calls")) as f:
            return int(f.read())
    except FileNotFoundError:
        return 0


# The mock never answers these calls: once all four have reached it, the
# cancel surely comes while they run.
deadline = time.time() + 120
while slow_calls() < len(slow_ids):
    check(time.time() < deadline, f"only {slow_calls()} slow calls reached the upstream")
    time.sleep(0.05)
cancelled = client.batches.cancel(slow.id)
check(cancelled.status == "cancelling", f"cancel answered {cancelled.status}")
final = wait(slow.id)
check(final.status == "cancelled", f"cancelled batch ended {final.status}")
check(final.cancelled_at is not None, "cancelled_at set")
everything = lines_of(final.output_file_id) + lines_of(final.error_file_id)
seen = collections.Counter(l["custom_id"] for l in everything)
check(set(seen) == set(slow_ids) and all(n == 1 for n in seen.values()), f"cancelled lines: {seen}")
check(lines_of(final.output_file_id) == [], "no slow line completed")
for line in lines_of(final.error_file_id):
    check(line["error"]["code"] == "batch_cancelled", f"cancelled line {line}")
    check("while this request was running" in line["error"]["message"], f"cancelled mid-call: {line}")
check(final.request_counts.total == 4 and final.request_counts.completed == 0, f"counts {final.request_counts}")
try:
    client.batches.cancel(done.id)
    check(False, "cancelling a completed batch must fail")
except openai.ConflictError:
    pass

# 3. Lists with pagination: auto-paging over more than one page.
made = {batch.id, slow.id}
for _ in range(3):
    made.add(client.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h").id)
first = client.batches.list(limit=2)
check(len(first.data) == 2 and first.has_more, "first page of two with more to come")
listed = [b.id for b in client.batches.list(limit=2)]
check(len(listed) == len(set(listed)), "no batch listed twice")
check(made <= set(listed), f"all batches listed: {made - set(listed)}")
check(len(listed) == 5, f"five batches, got {len(listed)}")
files = [f.id for f in client.files.list(limit=2)]
check(len(files) == len(set(files)), "no file listed twice")
check({uploaded.id, slow_file.id, done.output_file_id} <= set(files), "files listed")
inputs = [f.id for f in client.files.list(purpose="batch", limit=1)]
check(sorted(inputs) == sorted([uploaded.id, slow_file.id]), f"input files {inputs}")

# 4. Errors as the SDK's exceptions; another owner sees nothing.
for call in (
    lambda: client.batches.retrieve("batch_doesnotexist"),
    lambda: client.files.retrieve("file-doesnotexist"),
    lambda: other.batches.retrieve(batch.id),
    lambda: other.files.content(uploaded.id),
    lambda: other.batches.cancel(batch.id),
):
    try:
        call()
        check(False, "expected NotFoundError")
    except openai.NotFoundError:
        pass
check(list(other.batches.list()) == [], "another owner lists no batches")
try:
    client.batches.create(input_file_id=uploaded.id, endpoint="/v1/nope", completion_window="24h")
    check(False, "a bad endpoint must fail")
except openai.BadRequestError as e:
    check(e.body and e.body.get("param") == "endpoint", f"error body {e.body}")
try:
    openai.OpenAI(api_key="sk-wrong", max_retries=0).files.list()
    check(False, "a wrong key must fail")
except openai.AuthenticationError:
    pass

# 5. Delete.
deleted = client.files.delete(slow_file.id)
check(deleted.deleted and deleted.id == slow_file.id, f"delete {deleted}")
try:
    client.files.retrieve(slow_file.id)
    check(False, "a deleted file must be gone")
except openai.NotFoundError:
    pass

print(f"e2e ok (openai {openai.__version__})")
