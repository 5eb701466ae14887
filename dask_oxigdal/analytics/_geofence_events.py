"""Enter/exit events of tracked ids for :func:`dask_oxigdal.analytics.geofencing.geofence` (private)."""

from __future__ import annotations

import numpy as np
import pandas as pd


class _Tracker:
    """Which polygons each tracked id is inside, across batches (int codes)."""

    def __init__(self, npolys: int) -> None:
        self.P = max(int(npolys), 1)
        self.known = pd.Index([])
        self.state = np.zeros(0, np.int64)  # sorted keys code * P + polygon position

    def codes(self, ids: np.ndarray) -> np.ndarray:
        idx = self.known.get_indexer(ids)
        new = idx < 0
        if new.any():
            fresh = pd.unique(ids[new])
            self.known = self.known.append(pd.Index(fresh))
            idx = self.known.get_indexer(ids)
        return idx.astype(np.int64)

    def events(self, ids: np.ndarray, rows: np.ndarray, g: np.ndarray):
        """(event rows, polygon positions, is_enter) of one batch; updates the state."""
        P = self.P
        n = ids.shape[0]
        code = self.codes(ids)
        order = np.lexsort((np.arange(n), code))
        sc = code[order]
        same = sc[1:] == sc[:-1]
        prev = np.full(n, -1, np.int64)
        nxt = np.full(n, -1, np.int64)
        prev[order[1:][same]] = order[:-1][same]
        nxt[order[:-1][same]] = order[1:][same]
        mkeys = rows * P + g
        ev_r, ev_g, ev_in = [], [], []
        # within the batch: consecutive rows of one id
        has_prev = prev[rows] >= 0
        pk = prev[rows[has_prev]] * P + g[has_prev]
        ent = ~np.isin(pk, mkeys)
        ev_r.append(rows[has_prev][ent])
        ev_g.append(g[has_prev][ent])
        ev_in.append(np.ones(int(ent.sum()), bool))
        has_next = nxt[rows] >= 0
        nk = nxt[rows[has_next]] * P + g[has_next]
        ext = ~np.isin(nk, mkeys)
        ev_r.append(nxt[rows[has_next]][ext])
        ev_g.append(g[has_next][ext])
        ev_in.append(np.zeros(int(ext.sum()), bool))
        # first row of each id against the state carried over
        first = prev < 0
        first_row_of = np.full(len(self.known), -1, np.int64)
        first_row_of[code[first]] = np.flatnonzero(first)
        fm = first[rows]
        k1 = code[rows[fm]] * P + g[fm]
        in_batch = np.isin(self.state // P, code[first])
        s_sub = self.state[in_batch]
        ent = ~np.isin(k1, s_sub)
        ev_r.append(rows[fm][ent])
        ev_g.append(g[fm][ent])
        ev_in.append(np.ones(int(ent.sum()), bool))
        ext = ~np.isin(s_sub, k1)
        ev_r.append(first_row_of[s_sub[ext] // P])
        ev_g.append(s_sub[ext] % P)
        ev_in.append(np.zeros(int(ext.sum()), bool))
        # new state: what the last row of each id is inside
        last = nxt[rows] < 0
        self.state = np.union1d(self.state[~in_batch], code[rows[last]] * P + g[last])
        r = np.concatenate(ev_r)
        gg = np.concatenate(ev_g)
        e = np.concatenate(ev_in)
        o = np.lexsort((gg, e, r))  # by row, exits first, then polygon
        return r[o], gg[o], e[o]
