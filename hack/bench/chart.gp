# make bench's chart: achieved 4-way rate and REQUEST->ACK p99 latency
# against the offered rate, one line per server. Variables: dir (the results
# folder with <server>.tsv files), servers (space separated), title.
set datafile separator "\t"
set datafile missing "-"
set key top left
set grid
set xlabel "offered 4-way exchanges/s (log)"
# Log scales: the peers that top out near 100-300/s stay readable beside
# those that reach thousands.
set logscale x
set xrange [*:*]

do for [format in "png svg"] {
	if (format eq "png") { set terminal pngcairo size 1400,560 font "sans,10" } else { set terminal svg size 1400,560 dynamic font "sans,10" }
	set output dir . "/chart." . format
	set multiplot layout 1,2 title title
	set ylabel "achieved exchanges/s (log)"
	set logscale y
	plot x with lines dashtype 2 linecolor "gray" title "offered", \
		for [i = 1:words(servers)] dir . "/" . word(servers, i) . ".tsv" using 2:3 skip 1 with linespoints linetype i linewidth 2 title word(servers, i)
	set ylabel "REQUEST->ACK p99, ms (log)"
	plot for [i = 1:words(servers)] dir . "/" . word(servers, i) . ".tsv" using 2:8 skip 1 with linespoints linetype i linewidth 2 title word(servers, i)
	unset multiplot
	unset output
}
