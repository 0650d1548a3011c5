"""Training loops: static scenes (``static``) and sequences (``dynamic``) on one engine (``trainer``)."""


def render_test_views(run_dir):
    """Render a finished run's held-out views; see ``neus2cli.train.static.render_test_views``."""
    from neus2cli.train.static import render_test_views as _render

    return _render(run_dir)
