"""The model page and playground: plain HTML, CSS and JavaScript shipped in this package.

    GET /              the model page (page.py), made from the live server: card, prices,
                       modalities, the parameter table (parameters.py), code to copy
                       (snippets.py), prompts that work, and the playground
    GET /playground    the playground alone
    GET /static/NAME   style.css, playground.js

No build step and nothing fetched from elsewhere: the page works without JavaScript for
everything but the playground, which talks to this server's own /v1/chat/completions.
"""
