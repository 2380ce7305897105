"""Butcher tableaus of the explicit Runge–Kutta methods that tfode offers.

A method *is* its tableau: stage nodes ``c``, the strictly lower triangular
coupling matrix ``a``, solution weights ``b``, optional error weights
``b_error`` (``b - b_embedded``) and a dense-output polynomial. Every tableau
checks its own consistency when it is created, and derives whether it is FSAL
("first same as last": the last stage is ``f(t1, y1)``).

Dense output convention. Let ``k_1 .. k_S`` be the stages of one step of size
``h`` from ``(t0, y0)`` and, for methods that are not FSAL, let ``k_{S+1} =
f(t1, y1)`` (the solver evaluates it anyway: it is the next step's first
stage). The interpolant at ``t0 + theta * h``, ``theta in [0, 1]``, is

    y(theta) = y0 + h * sum_i k_i * sum_j dense[i, j] * theta**(j + 1)

so ``dense`` has one row per (extended) stage and one column per power of
``theta``. At ``theta = 1`` the interpolant equals the step's solution.

References:
    Dormand & Prince (1980), "A family of embedded Runge-Kutta formulae".
    Shampine (1986), "Some practical Runge-Kutta formulas" (dopri5 error weights).
    Hairer, Nørsett & Wanner (1993), "Solving Ordinary Differential Equations I",
    §II.6 (dense output of DOPRI5).
    Tsitouras (2011), "Runge–Kutta pairs of order 5(4) satisfying only the first
    column simplifying assumption".
    Prince & Dormand (1981), "High order embedded Runge-Kutta formulae" (RK8(7)13M).
    Bogacki & Shampine (1989), "A 3(2) pair of Runge–Kutta formulas".
    Fehlberg (1969), NASA TR R-315 (RKF1(2)).
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np
from numpy.polynomial import polynomial as npoly

__all__ = ["ButcherTableau", "METHODS", "get_tableau", "method_names"]

_CONSISTENCY_TOL = 1e-9  # rational approximations in RK8(7)13M sum to within ~1e-12


@dataclasses.dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge–Kutta method as data.

    Args:
        name: Registry name, e.g. ``"dopri5"``.
        order: Order of the propagated solution.
        c: Stage nodes, length ``S`` with ``c[0] == 0``.
        a: Lower-triangular coupling rows; ``a[i]`` has ``i`` entries.
        b: Solution weights, length ``S``.
        b_error: ``b - b_embedded`` (length ``S``) or ``None`` for fixed-step methods.
        embedded_order: Order of the embedded solution (``None`` for fixed-step).
        dense: Dense-output coefficients, ``[S_ext, degree]``; ``None`` means the
            cubic Hermite interpolant through ``y0, y1, f(t0, y0), f(t1, y1)``.
        citation: Where the coefficients come from.

    Raises:
        ValueError: if the tableau is inconsistent (row sums differ from ``c``,
            weights do not sum to 1, error weights do not sum to 0, or the dense
            output does not reproduce the solution at ``theta = 1``).
    """

    name: str
    order: int
    c: tuple
    a: tuple
    b: tuple
    b_error: tuple | None = None
    embedded_order: int | None = None
    dense: np.ndarray | None = dataclasses.field(default=None, compare=False)
    citation: str = ""

    def __post_init__(self):
        s = len(self.c)
        if len(self.a) != s or any(len(row) != i for i, row in enumerate(self.a)):
            raise ValueError(f"{self.name}: `a` must have rows of length 0..{s - 1}.")
        if len(self.b) != s:
            raise ValueError(f"{self.name}: `b` must have {s} entries, got {len(self.b)}.")
        for i, row in enumerate(self.a):
            if abs(sum(row) - self.c[i]) > _CONSISTENCY_TOL:
                raise ValueError(f"{self.name}: row {i} of `a` sums to {sum(row)}, not c={self.c[i]}.")
        if abs(sum(self.b) - 1.0) > _CONSISTENCY_TOL:
            raise ValueError(f"{self.name}: weights `b` sum to {sum(self.b)}, not 1.")
        if self.b_error is not None:
            if len(self.b_error) != s:
                raise ValueError(f"{self.name}: `b_error` must have {s} entries.")
            if abs(sum(self.b_error)) > _CONSISTENCY_TOL:
                raise ValueError(f"{self.name}: error weights sum to {sum(self.b_error)}, not 0.")
        dense = self.dense if self.dense is not None else self._hermite_dense()
        dense = np.asarray(dense, dtype=np.float64)
        if dense.shape[0] != self.num_extended_stages:
            raise ValueError(
                f"{self.name}: dense output has {dense.shape[0]} rows, expected {self.num_extended_stages}."
            )
        at_one = dense.sum(axis=1)
        b_ext = np.concatenate([self.b, np.zeros(self.num_extended_stages - s)])
        if np.max(np.abs(at_one - b_ext)) > _CONSISTENCY_TOL:
            raise ValueError(f"{self.name}: dense output at theta=1 differs from `b`.")
        object.__setattr__(self, "dense", dense)

    @property
    def num_stages(self) -> int:
        return len(self.c)

    @property
    def fsal(self) -> bool:
        """Whether the last stage is ``f(t1, y1)`` (derived, not declared)."""
        last = self.a[-1]
        return (
            self.num_stages > 1
            and abs(self.c[-1] - 1.0) < _CONSISTENCY_TOL
            and abs(self.b[-1]) < _CONSISTENCY_TOL
            and all(abs(x - y) < _CONSISTENCY_TOL for x, y in zip(last, self.b[:-1]))
        )

    @property
    def num_extended_stages(self) -> int:
        """Stages plus ``f(t1, y1)`` when that is not already the last stage."""
        return self.num_stages if self.fsal else self.num_stages + 1

    @property
    def adaptive(self) -> bool:
        return self.b_error is not None

    @property
    def error_order(self) -> int:
        """Exponent ``q`` of the local error estimate, ``err ~ h**q``."""
        if self.embedded_order is None:
            return self.order + 1
        return min(self.order, self.embedded_order) + 1

    @property
    def fn_evals_per_step(self) -> int:
        """New evaluations of ``f`` per step (the first stage is reused)."""
        return self.num_extended_stages - 1

    def _hermite_dense(self) -> np.ndarray:
        """Cubic Hermite interpolant written in the stage basis.

        ``y(theta) = y0 + h*[h10(theta) f0 + h01(theta) sum_i b_i k_i + h11(theta) f1]``
        with ``h01 = 3θ² - 2θ³``, ``h10 = θ - 2θ² + θ³``, ``h11 = θ³ - θ²``.
        """
        s_ext = self.num_extended_stages
        dense = np.zeros((s_ext, 3))
        dense[:, :] += np.outer(np.concatenate([self.b, np.zeros(s_ext - self.num_stages)]), [0.0, 3.0, -2.0])
        dense[0] += [1.0, -2.0, 1.0]
        dense[s_ext - 1] += [0.0, -1.0, 1.0]
        return dense


def _polys_to_dense(polys, degree):
    """Stack polynomials (increasing-power coefficients, zero constant) into ``dense``."""
    out = np.zeros((len(polys), degree))
    for i, p in enumerate(polys):
        p = np.trim_zeros(np.asarray(p, dtype=np.float64), "b")
        if p.size and abs(p[0]) > 1e-14:
            raise ValueError("dense-output polynomials must vanish at theta = 0")
        out[i, : max(p.size - 1, 0)] = p[1:]
    return out


def _f(*fractions):
    return tuple(float(Fraction(x)) for x in fractions)


# --------------------------------------------------------------------------- fixed-step

EULER = ButcherTableau(name="euler", order=1, c=(0.0,), a=((),), b=(1.0,), citation="Euler (1768)")

MIDPOINT = ButcherTableau(
    name="midpoint", order=2, c=(0.0, 0.5), a=((), (0.5,)), b=(0.0, 1.0), citation="explicit midpoint rule"
)

RK4 = ButcherTableau(
    name="rk4",
    order=4,
    c=(0.0, 0.5, 0.5, 1.0),
    a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
    b=_f("1/6", "1/3", "1/3", "1/6"),
    citation="Kutta (1901), classical fourth-order method",
)

# --------------------------------------------------------------------------- adaptive, low order

ADAPTIVE_HEUN = ButcherTableau(
    name="adaptive_heun",
    order=2,
    embedded_order=1,
    c=(0.0, 1.0),
    a=((), (1.0,)),
    b=(0.5, 0.5),
    b_error=(-0.5, 0.5),  # Heun minus explicit Euler
    citation="Heun's method with an embedded Euler step",
)

FEHLBERG2 = ButcherTableau(
    name="fehlberg2",
    order=2,
    embedded_order=1,
    c=(0.0, 0.5, 1.0),
    a=((), (0.5,), _f("1/256", "255/256")),
    b=_f("1/512", "255/256", "1/512"),
    b_error=_f("1/512", "0", "-1/512"),
    citation="Fehlberg (1969), RKF1(2), propagating the second-order solution",
)

BOSH3 = ButcherTableau(
    name="bosh3",
    order=3,
    embedded_order=2,
    c=(0.0, 0.5, 0.75, 1.0),
    a=((), (0.5,), (0.0, 0.75), _f("2/9", "1/3", "4/9")),
    b=_f("2/9", "1/3", "4/9", "0"),
    b_error=tuple(x - y for x, y in zip(_f("2/9", "1/3", "4/9", "0"), _f("7/24", "1/4", "1/3", "1/8"))),
    citation="Bogacki & Shampine (1989)",
)

# --------------------------------------------------------------------------- Dormand–Prince 5(4)

_DOPRI5_B = _f("35/384", "0", "500/1113", "125/192", "-2187/6784", "11/84", "0")
# Shampine's (1986) embedded 4th-order weights, as torchdiffeq and diffrax use:
# the error estimate b - b_embedded is exactly 2/3 of the one from Dormand &
# Prince's original weights (5179/57600, 0, 7571/16695, ...), which
# over-estimates the local error of the propagated 5th-order solution.
_DOPRI5_B_EMBEDDED = _f("1951/21600", "0", "22642/50085", "451/720", "-12231/42400", "649/6300", "1/60")
# Hairer's continuous extension (dopri5.f, CONTD5): with D = y1 - y0,
#   y(θ) = y0 + θ(D + (1-θ)(r3 + θ(r4 + (1-θ) r5))),
#   r3 = h f0 - D,  r4 = D - h f1 - r3,  r5 = h Σ d_i k_i.
_DOPRI5_D = _f(
    "-12715105075/11282082432",
    "0",
    "87487479700/32700410799",
    "-10690763975/1880347072",
    "701980252875/199316789632",
    "-1453857185/822651844",
    "69997945/29380423",
)


def _dopri5_dense():
    b = np.array(_DOPRI5_B)
    e_first, e_last = np.eye(7)[0], np.eye(7)[6]
    r3 = e_first - b
    r4 = b - e_last - r3
    r5 = np.array(_DOPRI5_D)
    theta = [0.0, 1.0]
    basis = [theta, npoly.polymul(theta, [1.0, -1.0]), npoly.polymul([0, 0, 1.0], [1.0, -1.0])]
    basis.append(npoly.polymul([0, 0, 1.0], npoly.polymul([1.0, -1.0], [1.0, -1.0])))
    polys = [
        npoly.polyadd(
            npoly.polyadd(b[i] * np.asarray(basis[0]), r3[i] * basis[1]),
            npoly.polyadd(r4[i] * basis[2], r5[i] * basis[3]),
        )
        for i in range(7)
    ]
    return _polys_to_dense(polys, 4)


DOPRI5 = ButcherTableau(
    name="dopri5",
    order=5,
    embedded_order=4,
    c=_f("0", "1/5", "3/10", "4/5", "8/9", "1", "1"),
    a=(
        (),
        _f("1/5"),
        _f("3/40", "9/40"),
        _f("44/45", "-56/15", "32/9"),
        _f("19372/6561", "-25360/2187", "64448/6561", "-212/729"),
        _f("9017/3168", "-355/33", "46732/5247", "49/176", "-5103/18656"),
        _DOPRI5_B[:6],
    ),
    b=_DOPRI5_B,
    b_error=tuple(x - y for x, y in zip(_DOPRI5_B, _DOPRI5_B_EMBEDDED)),
    dense=_dopri5_dense(),
    citation="Dormand & Prince (1980); dense output of Hairer, Nørsett & Wanner (1993)",
)

# --------------------------------------------------------------------------- Tsitouras 5(4)

_TSIT5_A = (
    (),
    (0.161,),
    (-0.008480655492356988544426874250230774675121177393430391537369234245294192976164141156943,
     0.3354806554923569885444268742502307746751211773934303915373692342452941929761641411569),
    (2.897153057105493432130432594192938764924887287701866490314866693455023795137503079289,
     -6.359448489975074843148159912383825625952700647415626703305928850207288721235210244366,
     4.362295432869581411017727318190886861027813359713760212991062156752264926097707165077),
    (5.325864828439256604428877920840511317836476253097040101202360397727981648835607691791,
     -11.74888356406282787774717033978577296188744178259862899288666928009020615663593781589,
     7.495539342889836208304604784564358155658679161518186721010132816213648793440552049753,
     -0.09249506636175524925650207933207191611349983406029535244034750452930469056411389539635),
    (5.861455442946420028659251486982647890394337666164814434818157239052507339770711679748,
     -12.92096931784710929170611868178335939541780751955743459166312250439928519268343184452,
     8.159367898576158643180400794539253485181918321135053305748355423955009222648673734986,
     -0.07158497328140099722453054252582973869127213147363544882721139659546372402303777878835,
     -0.02826905039406838290900305721271224146717633626879770007617876201276764571291579142206),
)  # fmt: skip
_TSIT5_B = (
    0.09646076681806522951816731316512876333711995238157997181903319145764851595234062815396,
    0.01,
    0.4798896504144995747752495322905965199130404621990332488332634944254542060153074523509,
    1.379008574103741893192274821856872770756462643091360525934940067397245698027561293331,
    -3.290069515436080679901047585711363850115683290894936158531296799594813811049925401677,
    2.324710524099773982415355918398765796109060233222962411944060046314465391054716027841,
    0.0,
)  # fmt: skip
_TSIT5_B_EMBEDDED = (
    0.09468075576583945807478876255758922856117527357724631226139574065785592789071067303271,
    0.009183565540343253096776363936645313759813746240984095238905939532922955247253608687270,
    0.4877705284247615707855642599631228241516691959761363774365216240304071651579571959813,
    1.234297566930478985655109673884237654035539930748192848315425833500484878378061439761,
    -2.707712349983525454881109975059321670689605166938197378763992255714444407154902012702,
    1.866628418170587035753719399566211498666255505244122593996591602841258328965767580089,
    1.0 / 66.0,
)  # fmt: skip


def _tsit5_dense():
    """Tsitouras' free 4th-order interpolant, b_i(θ) given in factored form."""
    mul = npoly.polymul
    t2 = [0.0, 0.0, 1.0]
    polys = [
        -1.0530884977290216
        * mul(mul([0, 1.0], [-1.3299890189751412, 1.0]), [0.7139816917074209, -1.4364028541716351, 1.0]),
        0.1017 * mul(t2, [1.2949852507374631, -2.1966568338249754, 1.0]),
        2.490627285651252793 * mul(t2, [1.57803468208092486, -2.38535645472061657, 1.0]),
        -16.54810288924490272 * mul(mul([-1.21712927295533244, 1.0], [-0.61620406037800089, 1.0]), t2),
        47.37952196281928122 * mul(mul([-1.203071208372362603, 1.0], [-0.658047292653547382, 1.0]), t2),
        -34.87065786149660974 * mul(mul([-1.2, 1.0], [-2.0 / 3.0, 1.0]), t2),
        2.5 * mul(mul([-1.0, 1.0], [-0.6, 1.0]), t2),
    ]  # fmt: skip
    return _polys_to_dense(polys, 4)


TSIT5 = ButcherTableau(
    name="tsit5",
    order=5,
    embedded_order=4,
    c=(
        0.0,
        0.161,
        0.327,
        0.9,
        0.9800255409045096857298102862870245954942137979563024768854764293221195950761080302604,
        1.0,
        1.0,
    ),  # fmt: skip
    a=_TSIT5_A + (_TSIT5_B[:6],),
    b=_TSIT5_B,
    b_error=tuple(x - y for x, y in zip(_TSIT5_B, _TSIT5_B_EMBEDDED)),
    dense=_tsit5_dense(),
    citation="Tsitouras (2011)",
)

# --------------------------------------------------------------------------- Prince–Dormand 8(7)

_DOPRI8_C = _f("0", "1/18", "1/12", "1/8", "5/16", "3/8", "59/400", "93/200", "5490023248/9719169821",
               "13/20", "1201146811/1299019798", "1", "1", "1")  # fmt: skip
_DOPRI8_B = _f("14005451/335480064", "0", "0", "0", "0", "-59238493/1068277825", "181606767/758867731",
               "561292985/797845732", "-1041891430/1371343529", "760417239/1151165299",
               "118820643/751138087", "-528747749/2220607170", "1/4", "0")  # fmt: skip
_DOPRI8_B_EMBEDDED = _f("13451932/455176623", "0", "0", "0", "0", "-808719846/976000145",
                        "1757004468/5645159321", "656045339/265891186", "-3867574721/1518517206",
                        "465885868/322736535", "53011238/667516719", "2/45", "0", "0")  # fmt: skip
_DOPRI8_A = (
    (),
    _f("1/18"),
    _f("1/48", "1/16"),
    _f("1/32", "0", "3/32"),
    _f("5/16", "0", "-75/64", "75/64"),
    _f("3/80", "0", "0", "3/16", "3/20"),
    _f("29443841/614563906", "0", "0", "77736538/692538347", "-28693883/1125000000", "23124283/1800000000"),
    _f("16016141/946692911", "0", "0", "61564180/158732637", "22789713/633445777", "545815736/2771057229",
       "-180193667/1043307555"),
    _f("39632708/573591083", "0", "0", "-433636366/683701615", "-421739975/2616292301", "100302831/723423059",
       "790204164/839813087", "800635310/3783071287"),
    _f("246121993/1340847787", "0", "0", "-37695042795/15268766246", "-309121744/1061227803",
       "-12992083/490766935", "6005943493/2108947869", "393006217/1396673457", "123872331/1001029789"),
    _f("-1028468189/846180014", "0", "0", "8478235783/508512852", "1311729495/1432422823",
       "-10304129995/1701304382", "-48777925059/3047939560", "15336726248/1032824649",
       "-45442868181/3398467696", "3065993473/597172653"),
    _f("185892177/718116043", "0", "0", "-3185094517/667107341", "-477755414/1098053517",
       "-703635378/230739211", "5731566787/1027545527", "5232866602/850066563", "-4093664535/808688257",
       "3962137247/1805957418", "65686358/487910083"),
    _f("403863854/491063109", "0", "0", "-5068492393/434740067", "-411421997/543043805",
       "652783627/914296604", "11173962825/925320556", "-13158990841/6184727034", "3936647629/1978049680",
       "-160528059/685178525", "248638103/1413531060", "0"),
    _DOPRI8_B[:13],
)  # fmt: skip
# Continuous extension b_i(θ) = θ * P_i(θ) of the 8(7) pair, P_i given by increasing powers.
_DOPRI8_DENSE_P = {
    0: (1.0, -6.6910181737837595697, 19.9990069333683970610, -30.0610568289666450593,
        22.1396504998094068976, -6.3448349392860401388),
    5: (0.0, -7.6142658045872677172, 52.2273532792945524050, -121.4999627731334642623,
        116.4422149550342161651, -39.6107919852202505218),
    6: (0.0, 10.7281392630428866124, -46.8919164181093621583, 83.1721004639847717481,
        -67.1451318825957197185, 20.3761213808791436958),
    7: (0.0, 0.5526637063753648783, -0.1890893225010595467, 9.5724507555993664382,
        -16.5672243527496524646, 7.3347098826795362023),
    8: (0.0, 4.2186562625665153803, -35.7075975946222072821, 87.8406057677205645007,
        -89.9916014847245016028, 32.8801774352459155182),
    9: (0.0, -0.6627209125361597559, 6.2736448083240352160, -17.4152107770762969005,
        22.6237489648532849093, -10.1588990526426760954),
    10: (0.0, -1.2636789001135462218, 10.3160881272450748458, -28.5903289514790976966,
         32.2362340167355370113, -12.5401268098782561200),
    11: (0.0, 5.4106037898590422230, -34.7650769866611817349, 81.6630950584341412934,
         -82.1020315488359848644, 29.5553001484516038033),
    12: (0.0, -7.0321379067945741781, 47.7457971078225540396, -114.9375291377009418170,
         116.2662185791119533462, -41.7923486424390588923),
    13: (0.0, 2.3537586759714983486, -19.0082099341608028453, 50.2558364226176017553,
         -53.9020777466385396792, 20.3006925822100825485),
}  # fmt: skip


def _dopri8_dense():
    dense = np.zeros((14, 6))
    for i, p in _DOPRI8_DENSE_P.items():
        dense[i] = p
    # The published coefficients are rounded to ~1e-13; renormalise so the
    # interpolant reproduces the step's solution exactly at θ = 1.
    dense[:, 0] += np.asarray(_DOPRI8_B) - dense.sum(axis=1)
    return dense


DOPRI8 = ButcherTableau(
    name="dopri8",
    order=8,
    embedded_order=7,
    c=_DOPRI8_C,
    a=_DOPRI8_A,
    b=_DOPRI8_B,
    b_error=tuple(x - y for x, y in zip(_DOPRI8_B, _DOPRI8_B_EMBEDDED)),
    dense=_dopri8_dense(),
    citation="Prince & Dormand (1981), RK8(7)13M, with a 6th-degree continuous extension (5th order)",
)

METHODS: dict[str, ButcherTableau] = {
    tableau.name: tableau for tableau in (DOPRI5, TSIT5, BOSH3, FEHLBERG2, ADAPTIVE_HEUN, DOPRI8, EULER, MIDPOINT, RK4)
}


def method_names() -> list[str]:
    """Names accepted by ``method=``, adaptive methods first."""
    return list(METHODS)


def get_tableau(method) -> ButcherTableau:
    """Look a method up by name (or pass a ``ButcherTableau`` through).

    Raises:
        ValueError: if ``method`` is not a registered name.
    """
    if isinstance(method, ButcherTableau):
        return method
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"Unknown method={method!r}; valid methods are: {', '.join(METHODS)}.")
    return METHODS[method]
