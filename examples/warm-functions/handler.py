"""A Lambda handler as deployed to AWS Lambda: fnbroker runs it warm with awslambdaric."""
import os


def handle(event, context):
    # `event` is the CloudEvent in structured mode; the return value is the reply.
    data = event.get("data") or {}
    return {
        "resized": data.get("image"),
        "width": data.get("width", 640) // 2,
        "request_id": context.aws_request_id,
        "pid": os.getpid(),
    }
