"""The snapshot's HTML selection report (`report.html`) and the score sample it draws from.

`thresher.report.html.write_report(snapshot_dir, manifest)` writes the page;
`thresher.report.sample` is the bounded score sample the selector template keeps per stage.
Nothing is imported here, so the selector template can import the sample module cheaply.
"""
