//! Panels of Grafana's dashboard model (time series, stat, heatmap) and their layout.

use serde_json::{Value, json};

/// The unit a panel's values are drawn in (Grafana's unit ids).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Unit {
    /// Per second.
    PerSecond,
    Seconds,
    Bytes,
    /// A ratio drawn as a percentage (0.999 shows as 99.9 %).
    Ratio,
    /// A plain number (a burn rate, a count).
    Number,
}

impl Unit {
    fn id(self) -> &'static str {
        match self {
            Self::PerSecond => "reqps",
            Self::Seconds => "s",
            Self::Bytes => "bytes",
            Self::Ratio => "percentunit",
            Self::Number => "none",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    TimeSeries,
    Stat,
    Heatmap,
}

/// One panel: its queries, unit, thresholds and size.
#[derive(Clone, Debug)]
pub(crate) struct Panel {
    kind: Kind,
    title: String,
    description: String,
    unit: Unit,
    targets: Vec<(String, String)>,
    /// `(value, color)` above which a value takes `color`; drawn as lines on a time series.
    thresholds: Vec<(f64, &'static str)>,
    /// The color below the first threshold.
    base_color: &'static str,
    /// Value → text (a state gauge: 0 closed, 2 open).
    mappings: Vec<(i64, &'static str, &'static str)>,
    min: Option<f64>,
    max: Option<f64>,
    width: u32,
    height: u32,
}

impl Panel {
    fn new(kind: Kind, title: &str, description: &str, unit: Unit) -> Self {
        Self {
            kind,
            title: title.to_owned(),
            description: description.to_owned(),
            unit,
            targets: Vec::new(),
            thresholds: Vec::new(),
            base_color: "green",
            mappings: Vec::new(),
            min: None,
            max: None,
            width: 12,
            height: 8,
        }
    }

    /// A time series.
    pub(crate) fn graph(title: &str, description: &str, unit: Unit) -> Self {
        Self::new(Kind::TimeSeries, title, description, unit)
    }

    /// One current value, large (a quarter of a row by default).
    pub(crate) fn stat(title: &str, description: &str, unit: Unit) -> Self {
        Self::new(Kind::Stat, title, description, unit).size(6, 4)
    }

    /// The distribution over time of a histogram's buckets (`expr` yields `le` buckets).
    pub(crate) fn heatmap(title: &str, description: &str, expr: &str) -> Self {
        Self::new(Kind::Heatmap, title, description, Unit::Seconds).query(expr, "{{le}}")
    }

    /// Adds a query; `legend` is Grafana's legend template (`{{route}}`).
    #[must_use]
    pub(crate) fn query(mut self, expr: &str, legend: &str) -> Self {
        self.targets.push((expr.to_owned(), legend.to_owned()));
        self
    }

    /// Values at or above `value` turn `color`; a time series draws the line.
    #[must_use]
    pub(crate) fn threshold(mut self, value: f64, color: &'static str) -> Self {
        self.thresholds.push((value, color));
        self.thresholds.sort_by(|a, b| a.0.total_cmp(&b.0));
        self
    }

    /// The color below every threshold (green by default; red where higher is better).
    #[must_use]
    pub(crate) fn below(mut self, color: &'static str) -> Self {
        self.base_color = color;
        self
    }

    /// Shows `value` as `text` in `color`.
    #[must_use]
    pub(crate) fn mapping(mut self, value: i64, text: &'static str, color: &'static str) -> Self {
        self.mappings.push((value, text, color));
        self
    }

    #[must_use]
    pub(crate) fn range(mut self, min: f64, max: f64) -> Self {
        (self.min, self.max) = (Some(min), Some(max));
        self
    }

    /// Width in grid columns (24 make a row) and height in grid rows.
    #[must_use]
    pub(crate) fn size(mut self, width: u32, height: u32) -> Self {
        (self.width, self.height) = (width.min(24), height);
        self
    }

    fn to_json(&self, id: usize, x: u32, y: u32) -> Value {
        let datasource = json!({"type": "prometheus", "uid": "${datasource}"});
        let targets: Vec<Value> = self
            .targets
            .iter()
            .zip('A'..='Z')
            .map(|((expr, legend), ref_id)| {
                let mut target = json!({
                    "refId": ref_id.to_string(),
                    "datasource": datasource,
                    "expr": expr,
                    "legendFormat": legend,
                    "range": self.kind != Kind::Stat,
                    "instant": self.kind == Kind::Stat,
                });
                if self.kind == Kind::Heatmap {
                    target["format"] = json!("heatmap");
                }
                target
            })
            .collect();
        let mut steps = vec![json!({"color": self.base_color, "value": null})];
        steps.extend(
            self.thresholds
                .iter()
                .map(|(value, color)| json!({"color": color, "value": value})),
        );
        let mut defaults = json!({
            "unit": self.unit.id(),
            "thresholds": {"mode": "absolute", "steps": steps},
            "color": {"mode": if self.kind == Kind::TimeSeries { "palette-classic" } else { "thresholds" }},
        });
        if let Some(min) = self.min {
            defaults["min"] = json!(min);
        }
        if let Some(max) = self.max {
            defaults["max"] = json!(max);
        }
        if !self.mappings.is_empty() {
            let options: serde_json::Map<String, Value> = self
                .mappings
                .iter()
                .enumerate()
                .map(|(index, (value, text, color))| {
                    (
                        value.to_string(),
                        json!({"text": text, "color": color, "index": index}),
                    )
                })
                .collect();
            defaults["mappings"] = json!([{"type": "value", "options": options}]);
        }
        let options = match self.kind {
            Kind::TimeSeries => {
                defaults["custom"] = json!({
                    "drawStyle": "line",
                    "lineWidth": 1,
                    "fillOpacity": 10,
                    "showPoints": "never",
                    "spanNulls": false,
                    "thresholdsStyle": {"mode": if self.thresholds.is_empty() { "off" } else { "line" }},
                });
                json!({
                    "legend": {"displayMode": "list", "placement": "bottom", "showLegend": true},
                    "tooltip": {"mode": "multi", "sort": "desc"},
                })
            }
            Kind::Stat => json!({
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": false},
                "colorMode": "value",
                "graphMode": "none",
                "justifyMode": "auto",
                "orientation": "auto",
                "textMode": "auto",
            }),
            Kind::Heatmap => json!({
                "calculate": false,
                "yAxis": {"unit": "s", "axisPlacement": "left"},
                "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
                "cellGap": 1,
                "tooltip": {"mode": "single", "yHistogram": true},
                "legend": {"show": true},
            }),
        };
        json!({
            "id": id,
            "type": match self.kind {
                Kind::TimeSeries => "timeseries",
                Kind::Stat => "stat",
                Kind::Heatmap => "heatmap",
            },
            "title": self.title,
            "description": self.description,
            "datasource": datasource,
            "gridPos": {"h": self.height, "w": self.width, "x": x, "y": y},
            "targets": targets,
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": options,
        })
    }
}

/// Places panels left to right, starting a new row when one does not fit in 24 columns.
pub(crate) fn lay_out(panels: Vec<Panel>) -> Vec<Value> {
    let (mut x, mut y, mut row_height) = (0, 0, 0);
    panels
        .iter()
        .enumerate()
        .map(|(index, panel)| {
            if x + panel.width > 24 {
                (x, y, row_height) = (0, y + row_height, 0);
            }
            let placed = panel.to_json(index + 1, x, y);
            x += panel.width;
            row_height = row_height.max(panel.height);
            placed
        })
        .collect()
}
