"""AI chat (spec section 5): ``prompt`` / ``prompt_reply`` to an OpenAI-compatible endpoint.

``conversations`` keeps the turns per ``conversation_id``; ``llm`` streams one answer from a
Chat Completions endpoint. The hub glue is ``backend.hub.chatting``.
"""
