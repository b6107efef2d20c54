"""The operators' console: a small server-rendered web page over the ledger (README, "Console").

`app` routes the requests of the `console` function; `queries` is what the pages read from the ledger;
`actions` cancels and re-runs; `csrf` guards the forms; `charts` draws the inline SVG. Templates and the
one stylesheet sit beside them. Deployed as its own private function; `make dev` serves it locally.
"""
